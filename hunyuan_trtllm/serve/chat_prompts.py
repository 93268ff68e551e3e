"""Chat prompt ids for the OpenAI endpoint, computed off the event loop within the server's limits.

Three steps, each in a worker thread so that ``/health`` and other requests keep being served: protect the
request's text (:mod:`hunyuan_trtllm.checkpoints.prompt_guard`), render the template (a Jinja template in a worker
process bounded in time, output and memory, :mod:`hunyuan_trtllm.serve.template_worker`; the built-in renderer in
the thread), encode (the template's special tokens as control tokens, the request's text as text).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.serve.http_safety import ServerLimits
from hunyuan_trtllm.serve.template_worker import TemplateRenderError, TemplateWorkers


class PromptError(Exception):
    """The prompt cannot be built: answered with ``status`` and an OpenAI error body."""

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class ChatPrompts:
    """Builds prompt ids for chat requests to one model."""

    def __init__(self, tokenizer: HunyuanTokenizer, limits: ServerLimits) -> None:
        self.tokenizer, self.limits = tokenizer, limits
        try:
            template = tokenizer.chat_template
        except UserError:
            template = None
        self._workers = None if template is None or template.is_builtin else TemplateWorkers(
            template, limits.template_timeout_s, limits.template_max_chars, limits.template_memory_bytes)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, thinking: bool | None) -> str:
        if self._workers is not None:
            return self._workers.render(messages, tools, thinking)
        text = self.tokenizer.render_chat(messages, tools, thinking)
        if len(text) > self.limits.template_max_chars:
            raise PromptError(f"the prompt is longer than {self.limits.template_max_chars} characters",
                              code="prompt_too_large")
        return text

    async def ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  enable_thinking: bool | None) -> list[int]:
        """The prompt ids, or :class:`PromptError`."""
        try:
            chat = await asyncio.to_thread(self.tokenizer.protect_chat, messages, tools)
            text = await asyncio.to_thread(self._render, chat.messages, chat.tools, enable_thinking)
        except TemplateRenderError as exc:
            raise PromptError(str(exc), exc.status, exc.code) from None
        except (UserError, ValueError) as exc:
            raise PromptError(str(exc)) from None
        return await asyncio.to_thread(self.tokenizer.encode_prompt, text, chat.sentinel)

    def close(self) -> None:
        """Stop the template workers."""
        if self._workers is not None:
            self._workers.close()
