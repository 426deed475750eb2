"""Request bodies of the OpenAI API as far as glm-engine serves them, and errors in OpenAI's shape."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from glm_engine.errors import InputError
from glm_engine.serving.sampling import SamplingParams

MAX_CHOICES = 8
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The fields both endpoints share. OpenAI's conventions: ``temperature`` 0 is greedy, 1 by default."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    def check_supported(self) -> None:
        if self.presence_penalty or self.frequency_penalty:
            raise InputError("presence_penalty and frequency_penalty are not supported; leave them at 0")

    def sampling(self, max_tokens: int, logprobs: int | None, choice: int) -> SamplingParams:
        """The core's parameters for choice ``choice`` (a given seed is offset per choice, so choices differ)."""
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=None if self.seed is None else self.seed + choice,
            stop=stops,
            logprobs=logprobs,
        )


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto"] | dict[str, Any] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def check_supported(self) -> None:
        super().check_supported()
        if isinstance(self.tool_choice, dict):
            raise InputError('tool_choice naming a function is not supported; use "auto" or "none"')

    def active_tools(self) -> list[dict[str, Any]] | None:
        return None if self.tool_choice == "none" else self.tools


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    # glm-engine's extension: GLM-130B's beam search, as `glm-engine run --sampling-strategy BeamSearchStrategy`
    num_beams: int = Field(1, ge=1, le=16)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(3, ge=0)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must be a string or a non-empty list of strings")
        return value

    def check_supported(self) -> None:
        super().check_supported()
        if self.num_beams > 1 and (self.stream or self.n > self.num_beams or self.logprobs is not None):
            raise InputError("beam search answers whole: no stream or logprobs, and n at most num_beams")

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def error_response(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with ``status``, as OpenAI answers."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)
