"""Server settings: limits, batching and authentication, as one typed value."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr

InputType = Literal["text", "query", "document"]


class ServerSettings(BaseModel):
    """How ``tp-rag serve`` behaves. Defaults are safe for a local service: loopback only,
    bounded requests and queue, no API key (set one whenever the port is reachable by others)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to bind (loopback by default).")
    port: int = Field(8000, ge=0, le=65535)
    model_name: Optional[str] = Field(
        None, description="Name clients pass as `model` (default: the encoder's model setting)."
    )
    api_key: Optional[SecretStr] = Field(
        None, description="Require `Authorization: Bearer <key>` on /v1/* (not on /health)."
    )
    default_input_type: InputType = Field(
        "text", description="Template when a request names no input_type (OpenAI clients never do)."
    )
    # -- limits --
    max_inputs: int = Field(256, ge=1, description="Most texts in one request.")
    max_chars: int = Field(16_384, ge=1, description="Most characters in one text.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_top_k: int = Field(100, ge=1, description="Largest k for /v1/search.")
    max_queue_texts: int = Field(
        4096, ge=1, description="Texts waiting for the model before new requests get 503."
    )
    retry_after_s: int = Field(
        1, ge=0, description="Seconds a 503 (queue full, shutting down) asks clients to wait."
    )
    request_timeout_s: Optional[float] = Field(
        60.0, gt=0, description="Longest wait for the model; then 504 and the work is dropped "
        "(None: no limit)."
    )
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long accepted requests may take to finish."
    )
    # -- dynamic batching --
    batching: bool = Field(True, description="Merge concurrent requests into shared model runs.")
    max_batch_texts: int = Field(64, ge=1, description="Most texts in one merged model run.")
    max_wait_ms: float = Field(
        2.0, ge=0, description="How long the first request of a batch waits for company."
    )
    encode_batch_size: Optional[int] = Field(
        None, ge=1, description="Texts per forward pass inside a run (default: the encoder's)."
    )
