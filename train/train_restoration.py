"""Train the engine's luma restoration model and export it to ONNX.

    make train            # or: .work/train/bin/python train/train_restoration.py

A tiny SESR-style network (Bhardwaj et al., "Collapsible Linear Blocks for Super-Efficient Super
Resolution", MLSys 2022): every layer is a 3x3 convolution at the input resolution, trained in an
over-parameterised linear form (3x3 to ``EXPAND`` channels, then 1x1 back, plus identity) and collapsed
into one plain 3x3 convolution for export; a pixel shuffle makes the x2 output, added to a bicubic
upscale of the input (the "bicubic skip"). Each layer's bias is shifted by ``strength`` times a learned
vector: the network is told how hard the input was JPEG-compressed (0 = clean), so it removes blocking
from compressed inputs without over-smoothing clean ones.

Data: only photographs, nothing downloaded: ``TRAIN_PHOTOS`` (named in ``restoration_spec``), from the
sample data of scikit-image, scikit-learn, Matplotlib and PyWavelets and from the Debian wallpaper packages
(``make wallpapers``). ``VALIDATION_PHOTOS`` are never trained on: the gains on them are printed at the end
and every choice is made there; ``HELD_OUT_PHOTOS`` are never read here (``tests/bench/bench_engine.py``
evaluates on them). Degradations mimic poor catalog photos: antialiased bicubic downscale x2 (sometimes
another kernel), then JPEG at a random quality with 4:2:0 chroma (a fifth of the samples stay
uncompressed), some of them with mild noise first or compressed twice. Augmentations: scale, flips and
quarter turns, colour-channel order (a different luma per order) and gamma.

Reproducible: seeded, single-process data generation, fixed step count, deterministic kernels; checkpointed
every ``REFRESH_EVERY`` steps and resumable (run it again: it continues from ``--checkpoint``), step for step
the same as an uninterrupted run (checked: a run resumed at step 400 of 402 ends within 6e-8 of the
uninterrupted one's weights).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / ".work" / "train" / "checkpoint.pt"
sys.path.insert(0, str(REPO))

from train.photos import HELD_OUT_PHOTOS, TRAIN_PHOTOS, VALIDATION_PHOTOS, load_photo
from train.spec import restoration_spec

INPUT_PLANES = restoration_spec.INPUT_PLANES
INPUT_STRENGTH = restoration_spec.INPUT_STRENGTH
MODEL_PATH = restoration_spec.MODEL_PATH
OUTPUT_RESIDUAL = restoration_spec.OUTPUT_RESIDUAL
SCALE = restoration_spec.SCALE
compression_strength = restoration_spec.compression_strength
model_planes = restoration_spec.model_planes

CHANNELS = 16
BLOCKS = 6
EXPAND = 32
PATCH = 48  # low-resolution patch side
BATCH = 24
CLEAN_FRACTION = 0.2
#: The photo is first rescaled by a random factor from this to 1.0 (more textures per photo).
MIN_ZOOM = 0.5
LOSSES = {
    # L1-like (sharper than L2), smooth at zero.
    "charbonnier": lambda prediction, target: torch.sqrt((prediction - target) ** 2 + 1e-6).mean(),
    # What PSNR measures.
    "l2": lambda prediction, target: F.mse_loss(prediction, target),
}
CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
QUALITY_RANGE = (10, 95)
#: Of the compressed examples: this share carries mild Gaussian noise (sigma drawn from the range, in
#: 8-bit levels) and this share was compressed once before (at a quality from the range).
NOISE_FRACTION = 0.25
NOISE_SIGMA = (0.5, 3.0)
DOUBLE_COMPRESSION_FRACTION = 0.3
FIRST_QUALITY_RANGE = (30, 95)
#: Steps between pool refreshes; checkpoints are written at these boundaries (before the refresh), so a
#: resumed run regenerates exactly the pool an uninterrupted run would have.
REFRESH_EVERY = 400


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class CollapsibleConv(nn.Module):
    """3x3 conv to ``EXPAND`` channels, 1x1 back, (+ identity): linear, so it collapses to one 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, expand: int, residual: bool) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c_in, expand, 3, padding=1)
        self.squeeze = nn.Conv2d(expand, c_out, 1)
        self.residual = residual and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.squeeze(self.expand(x))
        return y + x if self.residual else y

    def collapsed(self) -> tuple[torch.Tensor, torch.Tensor]:
        w1, b1 = self.expand.weight, self.expand.bias  # [E, Cin, 3, 3], [E]
        w2, b2 = self.squeeze.weight[:, :, 0, 0], self.squeeze.bias  # [Cout, E], [Cout]
        weight = torch.einsum("oe,eikl->oikl", w2, w1).clone()
        bias = w2 @ b1 + b2
        if self.residual:
            for c in range(weight.shape[0]):
                weight[c, c, 1, 1] += 1.0
        return weight, bias


class RestorationNet(nn.Module):
    """Training form. ``forward(planes, strength)`` -> HR residual over the bicubic upscale of the luma.

    ``planes``: luma and the JPEG block-boundary masks (``model_planes``), [N, 3, H, W].
    """

    def __init__(self, channels: int = CHANNELS, blocks: int = BLOCKS, expand: int = EXPAND) -> None:
        super().__init__()
        self.head = CollapsibleConv(3, channels, expand, residual=False)
        self.body = nn.ModuleList(
            CollapsibleConv(channels, channels, expand, residual=True) for _ in range(blocks)
        )
        self.tail = CollapsibleConv(channels, SCALE * SCALE, expand, residual=False)
        # Per-layer bias shift per unit of compression strength (the conditioning).
        self.condition = nn.Parameter(torch.zeros(blocks + 1, channels))

    def forward(self, planes: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        s = strength.view(-1, 1, 1, 1)
        x = F.relu(self.head(planes) + s * self.condition[0].view(1, -1, 1, 1))
        skip = x
        for i, block in enumerate(self.body, start=1):
            x = F.relu(block(x) + s * self.condition[i].view(1, -1, 1, 1))
        return F.pixel_shuffle(self.tail(x + skip), SCALE)


class CollapsedNet(nn.Module):
    """Inference form: plain 3x3 convolutions, what is exported to ONNX."""

    def __init__(self, trained: RestorationNet) -> None:
        super().__init__()
        layers = [trained.head, *trained.body, trained.tail]
        self.convs = nn.ModuleList()
        for layer in layers:
            weight, bias = layer.collapsed()
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
            conv.weight.data.copy_(weight.detach())
            conv.bias.data.copy_(bias.detach())
            self.convs.append(conv)
        self.condition = nn.Parameter(trained.condition.detach().clone())

    def forward(self, planes: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.convs[0](planes) + strength.view(1, -1, 1, 1) * self.condition[0].view(1, -1, 1, 1))
        skip = x
        for i in range(1, len(self.convs) - 1):
            x = F.relu(self.convs[i](x) + strength.view(1, -1, 1, 1) * self.condition[i].view(1, -1, 1, 1))
        return F.pixel_shuffle(self.convs[-1](x + skip), SCALE)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def ycrcb_luma(pixels: np.ndarray) -> np.ndarray:
    # The engine's own conversion (leapi_server.engine.color.luma): cv2's full-range BT.601.
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2YCrCb)[..., 0]


def _jpeg(image: Image.Image, quality: int, mode: str) -> Image.Image:
    """Through a JPEG file at ``quality`` with 4:2:0 chroma (Pillow/libjpeg, as the catalog's images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=2)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    decoded.load()
    return decoded.convert(mode)


def degrade(
    hr: np.ndarray, rng: random.Random, min_zoom: float = MIN_ZOOM
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One training example: (low-res luma, its bicubic x2, high-res luma, strength), uint8 arrays."""
    # Vary the scale of the "true" image: more textures per photo, and detail at several frequencies.
    smallest_zoom = (PATCH * SCALE + 2 * SCALE) / min(hr.shape[:2])
    zoom = rng.uniform(min(max(min_zoom, smallest_zoom), 1.0), 1.0)
    mode = "RGB" if hr.ndim == 3 else "L"
    if hr.ndim == 3:
        # Swapping colour channels gives the same scene a different luma (other edges, other
        # textures), and the JPEG then compresses that luma for real: 6x the content of each photo.
        hr = hr[..., list(rng.choice(CHANNEL_ORDERS))]
    # Vary the tonal distribution too (darker and lighter versions of each photo).
    gamma = rng.uniform(0.7, 1.4)
    hr = np.round(255.0 * (hr / 255.0) ** gamma).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(hr), mode=mode)
    if zoom < 0.98:
        image = image.resize(
            (round(image.width * zoom), round(image.height * zoom)), Image.Resampling.LANCZOS
        )
    image = image.transpose(rng.choice(list(Image.Transpose))) if rng.random() < 0.75 else image
    width, height = image.width // (2 * SCALE) * 2 * SCALE, image.height // (2 * SCALE) * 2 * SCALE
    image = image.crop((0, 0, width, height))
    kernel = (
        Image.Resampling.BICUBIC
        if rng.random() < 0.8
        else rng.choice([Image.Resampling.LANCZOS, Image.Resampling.BILINEAR, Image.Resampling.BOX])
    )
    low = image.resize((width // SCALE, height // SCALE), kernel)
    quality = None
    if rng.random() >= CLEAN_FRACTION:
        if rng.random() < NOISE_FRACTION:
            # Mild sensor noise, then compressed with the image (what a phone photo carries).
            noise = np.random.default_rng(rng.randrange(2**32)).normal(
                0.0, rng.uniform(*NOISE_SIGMA), size=np.asarray(low).shape
            )
            low = Image.fromarray(
                np.clip(np.asarray(low) + noise, 0, 255).round().astype(np.uint8), mode=mode
            )
        if rng.random() < DOUBLE_COMPRESSION_FRACTION:
            # Saved once by the photographer, once more by the shop (same grid): only the last
            # quality is known to the engine, so the strength is that one's.
            low = _jpeg(low, rng.randint(*FIRST_QUALITY_RANGE), mode)
        quality = rng.randint(*QUALITY_RANGE)
        low = _jpeg(low, quality, mode)
    low_y = ycrcb_luma(np.asarray(low))
    up_y = cv2.resize(low_y, (width, height), interpolation=cv2.INTER_CUBIC)
    return low_y, up_y, ycrcb_luma(np.asarray(image)), compression_strength(quality)


class PatchPool:
    """Degraded variants of the training photos, regenerated now and then; patches sampled from them."""

    def __init__(
        self, photos: list[np.ndarray], variants: int, rng: random.Random, min_zoom: float = MIN_ZOOM
    ) -> None:
        self.photos, self.variants, self.rng, self.min_zoom = photos, variants, rng, min_zoom
        self.examples: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
        self.weights: list[float] = []
        self.refresh()

    def refresh(self) -> None:
        self.examples = [
            degrade(photo, self.rng, self.min_zoom) for photo in self.photos for _ in range(self.variants)
        ]
        # Sample photos by area, but cap the big smooth ones (retina, hubble) from dominating.
        self.weights = [min(e[0].size, 250_000) for e in self.examples]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        lows, ups, highs, strengths = [], [], [], []
        for low, up, high, strength in self.rng.choices(self.examples, weights=self.weights, k=size):
            y = self.rng.randrange(0, low.shape[0] - PATCH + 1)
            x = self.rng.randrange(0, low.shape[1] - PATCH + 1)
            # The JPEG was encoded from the image's origin: its grid sits at (0, 0) there.
            patch = low[y : y + PATCH, x : x + PATCH].astype(np.float32) / 255.0
            lows.append(model_planes(patch, (0, 0) if strength > 0 else None, top=y, left=x))
            hy, hx, hp = y * SCALE, x * SCALE, PATCH * SCALE
            ups.append(up[hy : hy + hp, hx : hx + hp])
            highs.append(high[hy : hy + hp, hx : hx + hp])
            strengths.append(strength)

        def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays)[:, None].astype(np.float32) / 255.0)

        planes = torch.from_numpy(np.stack(lows))
        return planes, tensor(ups), tensor(highs), torch.tensor(strengths, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Training, export
# --------------------------------------------------------------------------------------------------


def train(
    model: RestorationNet,
    photos: tuple[str, ...],
    *,
    steps: int,
    seed: int,
    threads: int,
    log_every: int,
    min_zoom: float = MIN_ZOOM,
    loss_name: str = "charbonnier",
    checkpoint: Path | None = None,
) -> RestorationNet:
    """Train ``model`` in place; with ``checkpoint``, resume from it if it exists and keep it up to date.

    A checkpoint holds the weights, optimiser, schedule and both random states as of a pool-refresh
    boundary, so a resumed run continues exactly as an uninterrupted one would.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # tiny weights late in training otherwise slow the CPU down badly
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    fingerprint = {
        "photos": list(photos),
        "steps": steps,
        "seed": seed,
        "loss": loss_name,
        "min_zoom": min_zoom,
    }
    first = 1
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise SystemExit(
                f"{checkpoint} is from another run ({state['fingerprint']}); delete it to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        first = state["step"]
        print(f"resumed from {checkpoint} at step {first}", flush=True)
    # Built from the restored random state: a resumed run's first step refreshes it anyway.
    pool = PatchPool([load_photo(name) for name in photos], variants=3, rng=rng, min_zoom=min_zoom)
    started, running = time.perf_counter(), 0.0
    for step in range(first, steps + 1):
        if step % REFRESH_EVERY == 0:
            if checkpoint is not None:
                _save_checkpoint(checkpoint, step, model, optimizer, schedule, rng, fingerprint)
            pool.refresh()
        low, up, high, strength = pool.batch(BATCH)
        prediction = up + model(low, strength)
        loss = LOSSES[loss_name](prediction, high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % log_every == 0:
            elapsed = time.perf_counter() - started
            done = step - first + 1
            print(
                f"step {step}/{steps}  loss {running / log_every:.5f}  lr {schedule.get_last_lr()[0]:.2e}  "
                f"{elapsed:.0f}s elapsed, ~{elapsed / done * (steps - step):.0f}s left",
                flush=True,
            )
            running = 0.0
    return model


def _save_checkpoint(
    path: Path,
    step: int,
    model: RestorationNet,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    rng: random.Random,
    fingerprint: dict[str, object],
) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "python_rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        "fingerprint": fingerprint,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # never a half-written checkpoint


VALIDATION_QUALITIES = (20, 40, 75, None)
VALIDATION_BORDER = 8


def luma_psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    crop = (slice(VALIDATION_BORDER, -VALIDATION_BORDER),) * 2
    mse = np.mean((candidate[crop].astype(np.float64) - reference[crop]) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def validation_gains(model: RestorationNet, names: tuple[str, ...]) -> dict[int | None, float]:
    """Mean luma PSNR gain (dB) over the bicubic x2 upscale per JPEG quality, degraded as the benchmark
    degrades its held-out photos (Pillow bicubic x2 down, Pillow JPEG 4:2:0 or none)."""
    gains: dict[int | None, list[float]] = {quality: [] for quality in VALIDATION_QUALITIES}
    model.eval()
    for name in names:
        photo = load_photo(name)
        height, width = (side - side % (SCALE * 8) for side in photo.shape[:2])
        original = Image.fromarray(np.ascontiguousarray(photo[:height, :width]))
        small = original.resize((width // SCALE, height // SCALE), Image.Resampling.BICUBIC)
        high = ycrcb_luma(np.asarray(original)).astype(np.float64)
        for quality in VALIDATION_QUALITIES:
            low = small
            if quality is not None:
                buffer = io.BytesIO()
                small.save(buffer, format="JPEG", quality=quality)
                low = Image.open(io.BytesIO(buffer.getvalue()))
            low_y = ycrcb_luma(np.asarray(low))
            up = cv2.resize(low_y, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
            planes = torch.from_numpy(
                model_planes(low_y.astype(np.float32) / 255, (0, 0) if quality else None)
            )
            with torch.no_grad():
                residual = model(planes[None], torch.tensor([compression_strength(quality)]))[0, 0].numpy()
            restored = np.clip(np.round((up + residual) * 255), 0, 255)
            gains[quality].append(luma_psnr(high, restored) - luma_psnr(high, np.round(up * 255)))
    model.train()
    return {quality: float(np.mean(values)) for quality, values in gains.items()}


def export(model: RestorationNet, path: Path, meta: dict[str, object]) -> None:
    import onnx

    collapsed = CollapsedNet(model).eval()
    planes = torch.from_numpy(
        model_planes(np.random.default_rng(0).random((40, 56), dtype=np.float32), (3, 5))
    )[None]
    strength = torch.tensor([0.7])
    with torch.no_grad():
        reference = model.eval()(planes, strength)
        check = collapsed(planes, strength)
    drift = (reference - check).abs().max().item()
    if drift > 1e-4:
        raise RuntimeError(f"collapsing changed the model's output by {drift}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        collapsed,
        (planes, strength),
        str(path),
        input_names=[INPUT_PLANES, INPUT_STRENGTH],
        output_names=[OUTPUT_RESIDUAL],
        dynamic_axes={INPUT_PLANES: {0: "n", 2: "h", 3: "w"}, OUTPUT_RESIDUAL: {0: "n", 2: "h2", 3: "w2"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--log-every", type=int, default=200)
    parser.add_argument("--channels", type=int, default=CHANNELS)
    parser.add_argument("--blocks", type=int, default=BLOCKS)
    parser.add_argument("--expand", type=int, default=EXPAND)
    parser.add_argument("--min-zoom", type=float, default=MIN_ZOOM)
    parser.add_argument("--loss", choices=sorted(LOSSES), default="charbonnier")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help=f"resume from this file if it exists, and keep it up to date (every {REFRESH_EVERY} steps)",
    )
    args = parser.parse_args(argv)
    photos = TRAIN_PHOTOS
    started = time.perf_counter()
    model = RestorationNet(args.channels, args.blocks, args.expand)
    train(
        model,
        photos,
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        log_every=args.log_every,
        min_zoom=args.min_zoom,
        loss_name=args.loss,
        checkpoint=args.checkpoint,
    )
    minutes = (time.perf_counter() - started) / 60
    parameters = sum(p.numel() for p in CollapsedNet(model).parameters())
    meta = {
        "producer": "train/train_restoration.py",
        "architecture": (
            f"SESR-like, {args.channels} channels, {args.blocks + 2} 3x3 layers, pixel shuffle x{SCALE}"
        ),
        "parameters": parameters,
        "steps": args.steps,
        "seed": args.seed,
        "train_photos": json.dumps(list(photos)),
        "validation_photos": json.dumps(list(VALIDATION_PHOTOS)),
        "held_out_photos": json.dumps(list(HELD_OUT_PHOTOS)),
        "torch": torch.__version__,
        "train_minutes": f"{minutes:.1f}",
    }
    export(model, args.out, meta)
    # Finished and exported: a later run starts afresh instead of "resuming" a completed one.
    args.checkpoint.unlink(missing_ok=True)
    gains = validation_gains(model, VALIDATION_PHOTOS)
    jpeg = np.mean([gain for quality, gain in gains.items() if quality is not None])
    shown = ", ".join(f"{'clean' if q is None else f'q{q}'} {g:+.2f}" for q, g in gains.items())
    print(f"validation x2 gain over bicubic (dB): {shown}; JPEG mean {jpeg:+.3f}", flush=True)
    print(
        f"exported {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {parameters} parameters) "
        f"after {minutes:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
