"""Transfer the results of a LEAPI pipeline into S3 through the Amazon provider's ``S3Hook``."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector
from airflow.sdk import Asset, BaseOperator

from leapi.errors import LeapiResultVerificationError
from leapi.results import ResultFile, result_files
from leapi_provider.exceptions import fail_on_permanent_errors
from leapi_provider.hooks.leapi import LeapiHook
from leapi_provider.operators.leapi import XCOM_FILES_KEY
from leapi_provider.results import file_record, raise_for_failed_results, spooled_download
from leapi_provider.utils import coerce_pipeline_ids

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

#: Fields a ``s3_key_template`` may use (``str.format`` syntax, after Jinja rendering).
KEY_TEMPLATE_FIELDS = ("pipeline_id", "file_name", "basename", "preset", "index", "ext")
DEFAULT_KEY_TEMPLATE = "leapi/{preset}/{file_name}"
#: Object metadata written with every result; a retried transfer recognises its own complete objects by it.
META_PIPELINE_ID = "leapi-pipeline-id"
META_RESULT_INDEX = "leapi-result-index"
META_SHA256 = "leapi-sha256"
META_SOURCE_URL = "leapi-source-url"
DEFAULT_MULTIPART_BYTES = 8 * 1024 * 1024
#: Outlet asset events carry at most this many object URIs in their ``extra``.
_MAX_URIS_IN_ASSET_EVENT = 100


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class LeapiResultToS3Operator(BaseOperator):
    """Copy every result of a DONE LEAPI pipeline into S3.

    Each result is streamed into a spooled temp file, verified (complete, decodable, the size LEAPI
    reported), then uploaded with ``upload_fileobj`` (multipart above ``multipart_threshold``) with its
    ``ContentType`` from the result's format, optional object tags, and metadata naming the pipeline and the
    sha256. Retry-safe: an object already written by this pipeline's result is kept without downloading it
    again; any other existing object is only overwritten with ``replace=True``.

    Lineage: every object is reported to Airflow's hook lineage collector; ``Asset`` outlets you declare get
    an asset event whose ``extra`` lists the written URIs (``pipeline_id``, ``uris``).

    :param pipeline_id: the pipeline (templated).
    :param s3_bucket: the bucket (templated).
    :param s3_key_template: the object key (templated, then ``str.format`` with ``pipeline_id``,
        ``file_name``, ``basename``, ``preset``, ``index``, ``ext``). Default ``leapi/{preset}/{file_name}``.
    :param replace: overwrite existing objects that this pipeline did not write.
    :param tags: S3 object tags (templated), e.g. ``{"team": "catalog"}``.
    :param aws_conn_id: the AWS connection.
    :param multipart_threshold: objects above this many bytes are uploaded in parts.
    :param multipart_chunksize: size of each part.
    :param allow_partial: succeed when some images of the pipeline failed (they are logged).
    :param leapi_conn_id: the LEAPI connection.
    :returns: the ``s3://`` URIs written (XCom ``files`` has their sha256, bytes and size).
    """

    template_fields: Sequence[str] = ("pipeline_id", "s3_bucket", "s3_key_template", "tags")
    template_fields_renderers: ClassVar[dict[str, str]] = {"tags": "json"}
    ui_color = "#c7e9f1"

    def __init__(
        self,
        *,
        pipeline_id: int | str,
        s3_bucket: str,
        s3_key_template: str = DEFAULT_KEY_TEMPLATE,
        replace: bool = False,
        tags: dict[str, str] | None = None,
        aws_conn_id: str | None = "aws_default",
        multipart_threshold: int = DEFAULT_MULTIPART_BYTES,
        multipart_chunksize: int = DEFAULT_MULTIPART_BYTES,
        allow_partial: bool = False,
        leapi_conn_id: str = LeapiHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline_id = pipeline_id
        self.s3_bucket = s3_bucket
        self.s3_key_template = s3_key_template
        self.replace = replace
        self.tags = tags
        self.aws_conn_id = aws_conn_id
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.allow_partial = allow_partial
        self.leapi_conn_id = leapi_conn_id
        self._pipeline_url: str | None = None
        self._written_uris: list[str] = []

    def _check_key_template(self, template: str) -> None:
        unknown = _template_fields(template) - set(KEY_TEMPLATE_FIELDS)
        if unknown:
            raise ValueError(
                f"{self.task_id}: s3_key_template uses unknown field(s) {sorted(unknown)}; "
                f"available: {', '.join(KEY_TEMPLATE_FIELDS)}"
            )
        if "file_name" not in _template_fields(template) and "index" not in _template_fields(template):
            raise ValueError(
                f"{self.task_id}: s3_key_template must contain {{file_name}} (or {{index}}) so that the results "
                "of one pipeline do not overwrite each other"
            )

    def object_key(self, result: ResultFile) -> str:
        stem, _, ext = result.file_name.rpartition(".")
        return self.s3_key_template.format(
            pipeline_id=result.pipeline_id,
            file_name=result.file_name,
            basename=stem.split("__", 1)[0],
            preset=result.preset,
            index=result.index,
            ext=ext,
        ).lstrip("/")

    @fail_on_permanent_errors()
    def execute(self, context: Context) -> list[str]:
        self._check_key_template(self.s3_key_template)
        (pipeline_id,) = coerce_pipeline_ids(self.pipeline_id)[:1]
        # (imported here: boto3 costs ~0.4 s, too much for every parse of a DAG file using this operator)
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3_hook = S3Hook(
            aws_conn_id=self.aws_conn_id,
            transfer_config_args={
                "multipart_threshold": self.multipart_threshold,
                "multipart_chunksize": self.multipart_chunksize,
            },
        )
        # The S3 client first: its setup must not eat into the life of the temp URLs read next.
        s3_hook.get_conn()
        with LeapiHook(self.leapi_conn_id) as hook:
            self._pipeline_url = hook.pipeline_url(pipeline_id)
            files, failed = result_files(hook.get_pipeline(pipeline_id))
            records = [self._copy(context, hook, s3_hook, pipeline_id, result) for result in files]
        uris = [record["uri"] for record in records]
        self._written_uris = uris
        context["ti"].xcom_push(key=XCOM_FILES_KEY, value=records)
        self._emit_outlet_events(context, pipeline_id, uris)
        raise_for_failed_results(pipeline_id, failed, allow_partial=self.allow_partial, log=self.log)
        return uris

    def _copy(
        self, context: Context, hook: LeapiHook, s3_hook: S3Hook, pipeline_id: int, result: ResultFile
    ) -> dict[str, Any]:
        """Upload one result (or keep the object a previous try wrote); its ``files`` record."""
        key = self.object_key(result)
        uri = f"s3://{self.s3_bucket}/{key}"
        existing = s3_hook.head_object(key, self.s3_bucket)
        if existing is not None:
            metadata = existing.get("Metadata") or {}
            written_by_us = metadata.get(META_PIPELINE_ID) == str(pipeline_id) and metadata.get(
                META_RESULT_INDEX
            ) == str(result.index)
            if written_by_us and metadata.get(META_SHA256) and not self.replace:
                self.log.info("%s already holds this result (sha256 %s); kept", uri, metadata[META_SHA256])
                known = {"sha256": metadata[META_SHA256], "bytes": existing.get("ContentLength")}
                return file_record(uri, None, result, **known)
            if not written_by_us and not self.replace:
                raise FileExistsError(
                    f"{uri} already exists and was not written by pipeline {pipeline_id}; "
                    "set replace=True to overwrite it"
                )
        with spooled_download(hook, result) as (verified, spool):
            extra_args: dict[str, Any] = {
                "ContentType": verified.mime,
                "Metadata": {
                    META_PIPELINE_ID: str(pipeline_id),
                    META_RESULT_INDEX: str(result.index),
                    META_SHA256: verified.sha256,
                    # Metadata must be ASCII; the source URL is informative only.
                    META_SOURCE_URL: (result.source_url or "").encode("ascii", "ignore").decode()[:1024],
                },
            }
            if self.tags:
                extra_args["Tagging"] = urlencode({str(k): str(v) for k, v in self.tags.items()})
            s3_hook.get_conn().upload_fileobj(
                spool, self.s3_bucket, key, ExtraArgs=extra_args, Config=s3_hook.transfer_config
            )
        stored = s3_hook.head_object(key, self.s3_bucket) or {}
        if stored.get("ContentLength") != verified.byte_count:
            raise LeapiResultVerificationError(
                f"{uri}: S3 holds {stored.get('ContentLength')} bytes, {verified.byte_count} were uploaded"
            )
        get_hook_lineage_collector().add_output_asset(
            context=s3_hook, scheme="s3", asset_kwargs={"bucket": self.s3_bucket, "key": key}
        )
        self.log.info("Uploaded %s (%d bytes, %s)", uri, verified.byte_count, verified.mime)
        return file_record(uri, verified, result)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """The LEAPI pipeline's results in; the folder of the objects written (one dataset) out."""
        from leapi_provider.lineage import dataset_of, folder_datasets, operator_lineage, pipeline_dataset

        (pipeline_id,) = coerce_pipeline_ids(self.pipeline_id)[:1]
        inputs = [pipeline_dataset(self._pipeline_url, pipeline_id)] if self._pipeline_url else []
        outputs = folder_datasets(self._written_uris) or [dataset_of(f"s3://{self.s3_bucket}/")]
        return operator_lineage(inputs=inputs, outputs=outputs)

    def _emit_outlet_events(self, context: Context, pipeline_id: int, uris: list[str]) -> None:
        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                extra: dict[str, Any] = {
                    "pipeline_id": pipeline_id,
                    "uris": uris[:_MAX_URIS_IN_ASSET_EVENT],
                    "count": len(uris),
                }
                context["outlet_events"][outlet].extra = extra
