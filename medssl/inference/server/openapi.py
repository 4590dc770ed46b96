"""What ``/openapi.json`` says about the service: answer bodies, error codes, the upload.

``POST /v1/predict`` streams its body to disk itself (:mod:`.uploads`), so FastAPI cannot
infer its request body: :data:`PREDICT_BODY` declares it. The error tables list the answers
the code really gives (``responses.ApiError`` raised in the routes, ``auth``, ``limits`` and
``uploads``), each with its stable ``error`` code; the service never answers 429 (a full
queue is 503 ``busy``). The models here document answers only: routes build their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from medssl.inference.predictor import OUTPUT_KINDS
from medssl.inference.server.uploads import FILE_FIELD, RAW_TYPES

BEARER = "bearerAuth"
_BINARY = {"type": "string", "format": "binary"}


class ErrorBody(BaseModel):
    """Every answer other than 2xx (uvicorn's own overload 503 excepted)."""

    error: str = Field(description="stable machine-readable code, e.g. `busy`, `invalid_input`")
    detail: str = Field(description="one line for a human; never a traceback or patient data")


class ProbeAnswer(BaseModel):
    status: Literal["alive", "ready"]


class ModelsAnswer(BaseModel):
    models: list[dict[str, Any]] = Field(
        description="the served model: name, task, heads, labels, label_values, modalities, "
        "backbone, artifact_sha256, plan, device, outputs ..."
    )


class OutputFile(BaseModel):
    bytes: int = Field(description="size of the output file; the file itself comes in `format=zip`")


class StowReport(BaseModel):
    status: Literal["stored", "failed", "skipped"]
    instances: int
    detail: str | None = None


class PredictionAnswer(BaseModel):
    summary: dict[str, Any] = Field(
        description="the prediction (`model`, `input`, `segmentation` / `detection` / "
        "`diagnosis` per head, `warnings`, `notes`, `timings_s`, `outputs`); the same as "
        "`prediction.json` of `medssl predict`, pseudonymous"
    )
    warnings: list[str] = Field(description="modality assumed or not one the model was trained on")
    outputs: dict[str, OutputFile] = Field(
        description="output files by name (`segmentation.nii.gz`, `seg.dcm`, `sr.dcm`, `overlay.png`)"
    )
    stow: StowReport | None = Field(
        None, description="only when the server STOWs DICOM outputs (`--stow-url`)"
    )


OUTPUTS_QUERY = Query(
    description=f"comma-separated, any of {', '.join(sorted(OUTPUT_KINDS))}: json (the summary), "
    "nifti (segmentation.nii.gz), seg (DICOM SEG, DICOM input only), sr (DICOM SR of "
    "detections, DICOM input only), png (overlay.png)",
    examples=["json,nifti,seg"],
)
FORMAT_QUERY = Query(
    description="json: the answer lists output files by size; zip: application/zip holding "
    "prediction.json and every output file",
    json_schema_extra={"enum": ["json", "zip"]},
)
MODALITY_QUERY = Query(
    description="the input's modality (CT, MR, PT ...; 1-16 upper-case letters or digits, "
    "case is folded): a NIfTI/NRRD carries none; a DICOM series' own Modality wins",
    examples=["MR"],
)


def errors(table: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error answers: ``{status: description}`` -> JSON ErrorBody."""
    return {status: {"model": ErrorBody, "description": text} for status, text in table.items()}


TOKEN_ERRORS = {
    401: "`unauthorized`: no `Authorization: Bearer <token>` header (`WWW-Authenticate` set)",
    403: "`forbidden`: the bearer token is not valid",
}
NOT_READY = "`not_ready`: the model is still loading or failed to load (`Retry-After: 5`)"
PREDICT_ERRORS = {
    400: "`bad_request`: broken multipart framing (no boundary, body ends early), or a "
    "`Content-Length` that is not one integer",
    **TOKEN_ERRORS,
    408: "`request_timeout`: the upload (or the request head) did not complete within its "
    "deadline; `upload_too_slow`: the upload averaged below the minimum rate after the grace "
    "period",
    413: "`payload_too_large`: body over the upload limit (answered before it is read); "
    "`too_many_files`: more files (or zip members) than the file cap; `too_large`: the "
    "volume the upload declares would need more memory than one prediction may use (refused "
    "before it is read, the message names the size, the estimate and the budget)",
    415: "`unsupported_media_type`: a content type other than multipart/form-data or a raw "
    "type, or a file that is not DICOM, a zip, NIfTI or NRRD (content sniffed, names ignored)",
    422: "`invalid_query`: unknown `outputs`, a `format` other than json/zip; `invalid_input`: "
    "a form field other than `file`, no files, an empty file, a zip/NIfTI/NRRD mixed with "
    "other files, a bad `modality`, a zip or series the reader refuses, a modality the model "
    "was not trained on under `--strict-modality`",
    431: "`headers_too_large`: the request head or one multipart part's headers exceed their cap",
    503: f"{NOT_READY}; `busy`: every prediction slot and queue place, or every upload slot, is taken "
    "(`Retry-After: 2`)",
    504: "`timeout`: no prediction slot freed, or the prediction did not finish, before the "
    "request deadline",
}
PREDICT_BODY: dict[str, Any] = {
    "required": True,
    "description": f"DICOM files of one series as multipart parts, all in field `{FILE_FIELD}`; "
    "or one zip (of a DICOM series), one NIfTI (`.nii`, `.nii.gz`) or one NRRD, as a single "
    f"`{FILE_FIELD}` part or as the raw body. Formats are sniffed from content; file names are "
    "never used.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FILE_FIELD],
                "properties": {FILE_FIELD: {"type": "array", "items": _BINARY}},
            }
        },
        **{kind: {"schema": _BINARY} for kind in sorted(RAW_TYPES)},
    },
}
PREDICT_OK = {
    "model": PredictionAnswer,
    "description": "the prediction: JSON (`format=json`), or with `format=zip` a zip holding "
    "`prediction.json` (this JSON) and every output file",
    "content": {"application/zip": {"schema": _BINARY}},
}


def bearer_openapi(app: FastAPI, open_paths: frozenset[str]) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that declares the bearer token on every route but ``open_paths``."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                BEARER: {"type": "http", "scheme": "bearer", "description": "the API token"}
            }
            schema["security"] = [{BEARER: []}]
            for path in open_paths & schema.get("paths", {}).keys():
                for operation in schema["paths"][path].values():
                    operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
