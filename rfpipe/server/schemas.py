"""Request and response bodies of the inference-server API, as pydantic models (they also feed OpenAPI).

Field names and shapes follow the Roboflow inference server's object-detection API, so its clients
(inference-sdk's `InferenceHTTPClient`) work unchanged. Unknown request fields are ignored, as
there: clients send options (iou_threshold, fix_batch_size, ...) that RF-DETR has no use for.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImagePayload(BaseModel):
    """One image in a request: `type` is base64 or url (numpy pickles are refused)."""

    type: str = Field(description="'base64' (JPEG, PNG, BMP, WebP or TIFF bytes) or 'url' (when the server allows it)")
    value: str = Field(description="base64 text (a data: URI prefix is accepted) or an http(s) URL")


class ObjectDetectionRequest(BaseModel):
    """Body of POST /infer/object_detection."""

    model_id: str = Field(description="the served model's id (GET /model/registry lists it)")
    image: ImagePayload | list[ImagePayload]
    api_key: str | None = None
    confidence: float = Field(0.4, ge=0.0, le=1.0, description="keep detections scoring strictly above this")
    class_filter: list[str] | None = Field(None, description="keep only these class names")
    max_detections: int | None = Field(None, ge=1, description="keep at most this many detections per image")
    disable_preproc_auto_orient: bool = False
    disable_preproc_contrast: bool = False
    disable_preproc_grayscale: bool = False
    disable_preproc_static_crop: bool = False
    visualize_predictions: bool = False
    visualization_labels: bool | None = None
    visualization_stroke_width: int | None = Field(None, ge=1, le=32)


class AddModelRequest(BaseModel):
    """Body of POST /model/add."""

    model_id: str
    api_key: str | None = None


class ImageDimensions(BaseModel):
    width: int
    height: int


class ObjectDetectionPrediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    x: float = Field(description="box centre x, pixels of the original image")
    y: float = Field(description="box centre y")
    width: float
    height: float
    confidence: float
    class_name: str = Field(alias="class")
    class_id: int
    detection_id: str


class ObjectDetectionResponse(BaseModel):
    """One image's result; a request with a list of images gets a list of these."""

    inference_id: str
    time: float = Field(description="seconds from the request's arrival to this result")
    image: ImageDimensions
    predictions: list[ObjectDetectionPrediction]
    visualization: str | None = Field(None, description="base64 JPEG with the boxes drawn, when asked for")


class ModelDescription(BaseModel):
    model_id: str
    task_type: str
    batch_size: int | None = None
    input_height: int | None = None
    input_width: int | None = None


class RegisteredModels(BaseModel):
    models: list[ModelDescription]


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: `message` names the problem (inference-sdk shows it to the caller)."""

    message: str
    error_type: str
    request_id: str
