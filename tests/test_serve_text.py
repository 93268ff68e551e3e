"""Hunyuan text handling: tokenizer files, chat templates, streaming detokenization and output parsing."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hunyuan_trtllm.checkpoints.chat_template import ChatTemplate, normalize_messages, render_builtin
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer, IncrementalDetokenizer
from hunyuan_trtllm.serve.output import Delta, StreamingOutputParser, parse_output

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FILES = SHARED / "fixtures" / "hunyuan-files"

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"},
     {"role": "assistant", "content": "<think>\n想\n</think>\n<answer>\n你好！\n</answer>"},
     {"role": "user", "content": "再见"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
    [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
    [{"role": "user", "content": "1"}, {"role": "user", "content": "2"}, {"role": "system", "content": "late"},
     {"role": "tool", "content": "42"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": [{"type": "text", "text": "parts"}]}],
]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气", "parameters": WEATHER}}]
TOOL_CONVERSATIONS = [
    [{"role": "user", "content": "北京天气?"}],
    [{"role": "system", "content": "SYS"}, {"role": "user", "content": "北京天气?"},
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "晴"}, {"role": "assistant", "content": "晴天"},
     {"role": "user", "content": "谢谢"}],
]
STREAM_TEXT = "你好，世界！😀 🇨🇳 Ünïcödé — 模型转换测试 ✓ 𝔘 e\u0301"
OUTPUTS = [
    "<think>\n先想一想。\n再想😀\n</think>\n<answer>\n答案是 42。\n</answer>",
    "<think>\n\n</think>\n<answer>\nfast\n\n</answer>",
    "<answer>\nno think block\n</answer>",
    '<think>\nr\n</think>\n<answer>\n<tool_calls>[{"name": "get_weather", "arguments": {"city": "北京"}}, '
    '{"name": "f", "arguments": "{}"}]</tool_calls>\n</answer>',
    '<think>\nr\n</think>\n<answer>\nsee <tool_calls>[{"name": oops}]</tool_calls> done\n</answer>',
    "<think>\nr < s and </thin x\n</think>\nplain after think",
    "<think>\nunterminated reasoning\n",
    "<think>\nr\n</think>\n<answer>\nunterminated <tool_calls>[{",
    "  just text <b>bold</b>\n",
    "<answer>\nx\n</answer>\ntrailing text is ignored",
    "",
]


def _model_dir(tmp: Path, family: str) -> Path:
    """A model directory holding the real tokenizer files of ``family`` (skips without ../shared)."""
    if not (FILES / "hy.tiktoken").is_file():
        pytest.skip("../shared is absent: no real Hunyuan tokenizer files")
    folder = tmp / family
    folder.mkdir()
    (folder / "hy.tiktoken").symlink_to(FILES / "hy.tiktoken")
    for name in ("tokenizer_config.json", "generation_config.json"):
        shutil.copy(FILES / family / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def a13b(tmp_path_factory) -> HunyuanTokenizer:
    return HunyuanTokenizer.from_model_dir(_model_dir(tmp_path_factory.mktemp("real"), "a13b"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from hunyuan_trtllm.synth.checkpoint import synth_checkpoint

    folder = tmp_path_factory.mktemp("tiny") / "a13b"
    synth_checkpoint(folder, "a13b", preset="tiny", dtype="float32")
    return folder


def _real_template(family: str) -> ChatTemplate:
    if not (FILES / family / "tokenizer_config.json").is_file():
        pytest.skip("../shared is absent: no real chat template")
    config = json.loads((FILES / family / "tokenizer_config.json").read_text(encoding="utf-8"))
    return ChatTemplate.from_tokenizer_files(config, FILES / "absent.jinja", builtin_allowed=True)


# ---- tokenizer -------------------------------------------------------------------------------------------------


def test_real_ids_and_marker_tokenisations(a13b: HunyuanTokenizer) -> None:
    assert a13b.vocab_size == 128167
    assert a13b.token_id("<|eos|>") == 127960 and a13b.token_id("<|extra_0|>") == 127962
    assert a13b.encode("<think>\n") == [14023, 771, 397]
    assert a13b.encode("用户：") == [20600, 5232]
    assert a13b.encode("<|eos|>") == [127960]
    assert 127960 not in a13b.encode("<|eos|>", allow_special=False)
    assert a13b.encode("e\u0301") == a13b.encode("é")  # NFC first, as Tencent's tokenizer
    assert (a13b.eos_token_id, a13b.pad_token_id, a13b.stop_token_ids) == (127960, 127961, (127960, 127967))
    with pytest.raises(KeyError):
        a13b.token_id("not one token")


def test_large_stop_ids_without_eos_token_in_config(tmp_path: Path) -> None:
    large = HunyuanTokenizer.from_model_dir(_model_dir(tmp_path, "large"))
    assert (large.eos_token_id, large.pad_token_id, large.stop_token_ids) == (127960, 127961, (127960, 127967))
    assert not large.render_chat([{"role": "user", "content": "Hi"}], enable_thinking=False).endswith("</think>\n")


def test_encoded_prompt_has_special_ids_where_the_template_puts_them(a13b: HunyuanTokenizer) -> None:
    prompt = a13b.render_chat(CONVERSATIONS[2], enable_thinking=False)
    ids = a13b.encode(prompt)
    start, sys_end, user_end, eos = 127958, 127966, 127962, 127960  # hunyuan.md section 5.1

    def plain(text: str) -> list[int]:
        return a13b.encode(text, allow_special=False)

    expected = ([start, *plain("你是助手。"), sys_end, *plain("你好"), user_end,
                 *plain("<think>\n想\n</think>\n<answer>\n你好！\n</answer>"), eos, start, *plain("再见"), user_end,
                 14023, 771, 1363, 524, 27963, 397])
    assert ids == expected
    assert a13b.decode(ids) == prompt
    assert a13b.decode(ids, skip_special_tokens=True) == prompt.replace("<|startoftext|>", "").replace(
        "<|extra_4|>", "").replace("<|extra_0|>", "").replace("<|eos|>", "")


def test_tiny_synthetic_model_end_to_end(tiny_dir: Path) -> None:
    tok = HunyuanTokenizer.from_model_dir(tiny_dir)
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert tok.vocab_size == 1003
    assert tok.stop_token_ids == tuple(generation["eos_token_id"]) and tok.pad_token_id == generation["pad_token_id"]
    assert tok.eos_token_id == tok.token_id("<|eos|>") == generation["eos_token_id"][0]
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "模型转换 ok?"}]
    prompt = tok.render_chat(messages)
    assert prompt == "<|startoftext|>You are helpful.<|extra_4|>模型转换 ok?<|extra_0|>"
    ids = tok.encode(prompt)
    assert ids[0] == tok.token_id("<|startoftext|>") and ids[-1] == tok.token_id("<|extra_0|>")
    assert tok.decode(ids) == prompt
    assert tok.decode(ids, skip_special_tokens=True) == "You are helpful.模型转换 ok?"
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == prompt


def test_tokenizer_json_backend(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from hunyuan_trtllm.checkpoints.hy_tokenizer import tiny_corpus

    eos, user = "<｜hy_place▁holder▁no▁2｜>", "<｜hy_User｜>"
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, special_tokens=[eos, user], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([tiny_corpus()], trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}{{ user if m.role == 'user' else '' }}{{ m.content }}{% endfor %}{{ eos_token }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos, "chat_template": template.replace(
        "user if", f"'{user}' if")}))
    tok = HunyuanTokenizer.from_model_dir(tmp_path)
    eos_id = tokenizer.token_to_id(eos)
    assert tok.stop_token_ids == (eos_id,) and tok.eos_token_id == eos_id and tok.pad_token_id is None
    prompt = tok.render_chat([{"role": "user", "content": STREAM_TEXT}])
    assert prompt == user + STREAM_TEXT + eos
    ids = tok.encode(prompt)
    assert ids[0] == tokenizer.token_to_id(user) and ids[-1] == eos_id and eos_id not in tok.encode(eos, False)
    assert tok.decode(ids) == prompt and tok.decode(ids, skip_special_tokens=True) == STREAM_TEXT
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == prompt


# ---- streaming detokenization ----------------------------------------------------------------------------------


def test_incremental_detokenizer_real_vocab(a13b: HunyuanTokenizer) -> None:
    ids = a13b.encode(STREAM_TEXT + "<|eos|>")
    assert len(ids) > len(STREAM_TEXT) // 2  # several characters take more than one token
    detok = IncrementalDetokenizer(a13b)
    chunks = [detok.push([i]) for i in ids]
    assert "".join(chunks) + detok.flush() == a13b.decode(ids)
    assert all("\ufffd" not in chunk for chunk in chunks)
    assert "" in chunks  # an emoji's first token alone is held back
    skipping = IncrementalDetokenizer(a13b, skip_special_tokens=True)
    assert skipping.push(ids) + skipping.flush() == a13b.decode(ids, skip_special_tokens=True)


def test_incremental_detokenizer_invalid_bytes_match_full_decode(a13b: HunyuanTokenizer) -> None:
    emoji = a13b.encode("😀")
    ids = [*emoji[:1], *a13b.encode("ab"), *emoji, *emoji[:1], 10**6]
    detok = IncrementalDetokenizer(a13b)
    assert "".join(detok.push([i]) for i in ids) + detok.flush() == a13b.decode(ids)
    assert a13b.decode(ids).endswith("\ufffd")


# ---- chat templates --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_builtin_template_is_byte_identical_to_a13b(enable_thinking: bool) -> None:
    real, builtin = _real_template("a13b"), ChatTemplate()
    assert builtin.is_builtin and not real.is_builtin
    for conversation in CONVERSATIONS:
        rendered = builtin.render(conversation, enable_thinking=enable_thinking)
        assert rendered == real.render(conversation, enable_thinking=enable_thinking)


def test_builtin_matches_large_template_without_thinking_suffix() -> None:
    large = _real_template("large")
    for conversation in CONVERSATIONS[:5]:
        assert ChatTemplate().render(conversation) == large.render(conversation)


def test_sandbox_rendering_matches_transformers() -> None:
    utils = pytest.importorskip("transformers.utils.chat_template_utils",
                                reason="transformers (the independent template renderer) is not installed")
    real = _real_template("a13b")
    for conversation in CONVERSATIONS:
        for thinking in (True, False):
            expected, _ = utils.render_jinja_template(
                [normalize_messages(conversation)], chat_template=real.source, enable_thinking=thinking)
            assert real.render(conversation, enable_thinking=thinking) == expected[0]


def test_builtin_tool_layout_matches_a13b_outside_the_instruction() -> None:
    real, builtin = _real_template("a13b"), ChatTemplate()
    instruction = re.compile(r"<\|startoftext\|>.*?<\|extra_4\|>", re.DOTALL)
    for conversation in TOOL_CONVERSATIONS:
        for thinking in (True, False):
            ours = builtin.render(conversation, tools=TOOLS, enable_thinking=thinking)
            theirs = real.render(conversation, tools=TOOLS, enable_thinking=thinking)
            assert instruction.sub("<I>", ours) == instruction.sub("<I>", theirs)
            assert ours.count("<|extra_4|>") == 1 and json.dumps(TOOLS, ensure_ascii=False) in ours
    assert "SYS" in render_builtin(normalize_messages(TOOL_CONVERSATIONS[1]), TOOLS)


# (messages, chat_template_kwargs): the thinking switches a user can combine
THINKING_CASES = [
    ([{"role": "user", "content": "/no_think 1+1?"}], {}),
    ([{"role": "user", "content": "/think 1+1?"}], {"enable_thinking": False}),
    ([{"role": "user", "content": "/no_think 1+1?"}], {"enable_thinking": True}),
    ([{"role": "user", "content": "/no_think a"}, {"role": "assistant", "content": "b"},
      {"role": "user", "content": "c"}], {}),
    ([{"role": "user", "content": "plain"}], {"enable_thinking": False}),
]


@pytest.mark.parametrize(("messages", "kwargs"), THINKING_CASES)
def test_prompt_is_byte_identical_to_transformers_apply_chat_template(a13b, messages, kwargs) -> None:
    """The real A13B tokenizer_config.json: our prompt is what transformers renders (no appended think block for
    /no_think, an explicit enable_thinking wins over a /think prefix)."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils",
                                reason="transformers (the independent template renderer) is not installed")
    config = json.loads((FILES / "a13b" / "tokenizer_config.json").read_text(encoding="utf-8"))
    expected, _ = utils.render_jinja_template([messages], chat_template=config["chat_template"], **kwargs)
    assert a13b.render_chat(messages, **kwargs) == expected[0]


def test_builtin_template_leaves_think_prefixes_to_the_model() -> None:
    builtin = ChatTemplate()
    assert builtin.render([{"role": "user", "content": "/no_think 1+1?"}]) == "<|startoftext|>/no_think 1+1?<|extra_0|>"
    think = builtin.render([{"role": "user", "content": "/think 1+1?"}], enable_thinking=False)
    assert think == "<|startoftext|>/think 1+1?<|extra_0|><think>\n\n</think>\n"


def test_text_parts_are_joined_with_newlines(a13b) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
    assert a13b.render_chat(parts) == "<|startoftext|>one\ntwo<|extra_0|>"


def test_unrenderable_messages_raise_value_error() -> None:
    with pytest.raises(ValueError):
        ChatTemplate().render([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(ValueError):
        _real_template("a13b").render([{"role": "user", "content": ""}, {"role": "user", "content": "x"}])


# ---- output parsing --------------------------------------------------------------------------------------------


def _joined(deltas: list[Delta]) -> tuple[str | None, str, list[tuple[str, str]]]:
    reasoning = "".join(d.reasoning_content for d in deltas if d.reasoning_content is not None) or None
    content = "".join(d.content for d in deltas if d.content is not None)
    calls = [(d.tool_call["function"]["name"], d.tool_call["function"]["arguments"]) for d in deltas if d.tool_call]
    return reasoning, content, calls


def _expected(text: str) -> tuple[str | None, str, list[tuple[str, str]]]:
    parsed = parse_output(text)
    return parsed.reasoning_content, parsed.content, [(c["function"]["name"], c["function"]["arguments"])
                                                      for c in parsed.tool_calls]


def test_parse_output_cases() -> None:
    assert _expected(OUTPUTS[0]) == ("先想一想。\n再想😀", "答案是 42。", [])
    assert _expected(OUTPUTS[1]) == (None, "fast\n", [])
    assert _expected(OUTPUTS[2]) == (None, "no think block", [])
    assert _expected(OUTPUTS[3]) == ("r", "", [("get_weather", '{"city": "北京"}'), ("f", "{}")])
    assert _expected(OUTPUTS[4]) == ("r", 'see <tool_calls>[{"name": oops}]</tool_calls> done', [])
    assert _expected(OUTPUTS[5]) == ("r < s and </thin x", "plain after think", [])
    assert _expected(OUTPUTS[6]) == ("unterminated reasoning\n", "", [])
    assert _expected(OUTPUTS[7]) == ("r", "unterminated <tool_calls>[{", [])
    assert _expected(OUTPUTS[8]) == (None, OUTPUTS[8], [])
    assert _expected(OUTPUTS[9]) == (None, "x", [])
    call = parse_output(OUTPUTS[3]).tool_calls[0]
    assert call["type"] == "function" and re.fullmatch(r"call_[0-9a-f]{24}", call["id"])


@pytest.mark.parametrize("text", OUTPUTS)
def test_streaming_matches_whole_parse_at_every_split(text: str) -> None:
    expected = _expected(text)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1, 7):
            parser = StreamingOutputParser()
            deltas = parser.push(text[:i]) + parser.push(text[i:j]) + parser.push(text[j:]) + parser.finish()
            assert _joined(deltas) == expected, (i, j)


def test_streaming_real_tokens_never_leak_tag_fragments(a13b: HunyuanTokenizer) -> None:
    text = OUTPUTS[0] + "<|eos|>"
    detok, parser = IncrementalDetokenizer(a13b, skip_special_tokens=True), StreamingOutputParser()
    deltas: list[Delta] = []
    for token in a13b.encode(text):
        deltas += parser.push(detok.push([token]))
    deltas += parser.push(detok.flush()) + parser.finish()
    assert _joined(deltas) == _expected(OUTPUTS[0])
    assert all("<" not in (d.content or d.reasoning_content or "") for d in deltas)
    assert [d.reasoning_content is not None for d in deltas] == sorted(
        (d.reasoning_content is not None for d in deltas), reverse=True)
