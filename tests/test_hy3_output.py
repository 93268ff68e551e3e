"""Hy3 output parsing: the worked examples of shared/reference/hy3.md §d.3, whole, character by character and
token by token (our synthetic Hy3 tokenizer, suffixed and bare token sets)."""

from __future__ import annotations

import json

import pytest

from hunyuan_trtllm.checkpoints.hy3_template import Hy3Tokens
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer, IncrementalDetokenizer
from hunyuan_trtllm.serve.hy3_output import Hy3StreamingParser, collect, parse_hy3_output, typed_value
from hunyuan_trtllm.synth.checkpoint import synth_config
from hunyuan_trtllm.synth.hy3_tokenizer import write_hy3_tokenizer_files

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]
TYPED = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "s": {"type": "string"}, "n": {"type": "number"}, "b": {"type": "boolean"}, "a": {"type": "array"},
    "o": {"type": "object"}, "i": {"type": ["integer", "null"]}}}}}]


def call_block(t: Hy3Tokens, *calls: tuple[str, list[tuple[str, str]]]) -> str:
    body = "".join(f"\n{t.tag('tool_call')}{name}{t.tag('tool_sep')}" + "".join(
        f"\n{t.tag('arg_key')}{k}{t.tag('arg_key', True)}\n{t.tag('arg_value')}{v}{t.tag('arg_value', True)}"
        for k, v in args) + f"\n{t.tag('tool_call', True)}" for name, args in calls)
    return t.tag("tool_calls") + body + "\n" + t.tag("tool_calls", True)


def examples(t: Hy3Tokens) -> list[tuple[str, str, list | None, dict]]:
    """(name, effort, tools, output, expected) — hy3.md §d.3 1-5, plus edge cases."""
    weather = call_block(t, ("get_weather", [("city", "Beijing"), ("days", "3")]))
    return [
        ("no_think", "no_think", None, "The capital of France is Paris.",
         {"reasoning_content": None, "content": "The capital of France is Paris.", "calls": []}),
        ("high", "high", None,
         f"We need 15% of 240. 10% is 24, 5% is 12, total 36.{t.tag('think', True)}15% of 240 is **36**.",
         {"reasoning_content": "We need 15% of 240. 10% is 24, 5% is 12, total 36.",
          "content": "15% of 240 is **36**.", "calls": []}),
        ("high, stopped while thinking", "high", None, "Let me think about < and </thi",
         {"reasoning_content": "Let me think about < and </thi", "content": None, "calls": []}),
        ("tool call", "no_think", WEATHER, "I'll look that up." + weather,
         {"reasoning_content": None, "content": "I'll look that up.",
          "calls": [("get_weather", {"city": "Beijing", "days": 3})]}),
        ("parallel calls", "no_think", WEATHER,
         call_block(t, ("get_weather", [("city", "Beijing"), ("days", "3")]),
                    ("get_weather", [("city", "3"), ("days", "7")])),
         {"reasoning_content": None, "content": None,
          "calls": [("get_weather", {"city": "Beijing", "days": 3}), ("get_weather", {"city": "3", "days": 7})]}),
        ("thinking + tool", "low", WEATHER,
         f"{t.tag('think')}Need the weather.{t.tag('think', True)}Let me check." + weather,
         {"reasoning_content": "Need the weather.", "content": "Let me check.",
          "calls": [("get_weather", {"city": "Beijing", "days": 3})]}),
        ("typed values", "no_think", TYPED, call_block(t, ("f", [
            ("s", " 007 "), ("n", "2.5"), ("b", "true"), ("a", "[1, \"x\"]"), ("o", "{\"k\": null}"), ("i", "4"),
            ("unknown", "[1, 2]"), ("py", "(1, 2)"), ("raw", "plain <text>")])),
         {"reasoning_content": None, "content": None, "calls": [("f", {
             "s": " 007 ", "n": 2.5, "b": True, "a": [1, "x"], "o": {"k": None}, "i": 4, "unknown": [1, 2],
             "py": [1, 2], "raw": "plain <text>"})]}),
        ("unclosed block stays content", "no_think", WEATHER,
         "ok" + t.tag("tool_calls") + "\n" + t.tag("tool_call") + "get_weather",
         {"reasoning_content": None, "content": "ok\n" + t.tag("tool_call") + "get_weather", "calls": []}),
        ("not the grammar stays content", "no_think", WEATHER,
         t.tag("tool_calls") + "[{\"name\": \"x\"}]" + t.tag("tool_calls", True),
         {"reasoning_content": None, "content": "[{\"name\": \"x\"}]" + t.tag("tool_calls", True), "calls": []}),
    ]


def check(parsed, expected) -> None:
    assert parsed.reasoning_content == expected["reasoning_content"]
    assert parsed.content == expected["content"]
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls]
    assert got == expected["calls"]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in parsed.tool_calls)


def without_ids(parsed):
    return (parsed.reasoning_content, parsed.content, [c["function"] for c in parsed.tool_calls])


@pytest.fixture(scope="module", params=[":opensource", ""], ids=["suffixed", "bare"])
def tokenizer(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hy3tok")
    config = synth_config("hy3")
    write_hy3_tokenizer_files(folder, config, request.param)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}))
    return HunyuanTokenizer.from_model_dir(folder)


def test_examples_whole_by_character_and_by_token(tokenizer):
    t = tokenizer.hy3.tokens
    for name, effort, tools, text, expected in examples(t):
        whole = parse_hy3_output(text, t, effort, tools)
        check(whole, expected)
        parser = Hy3StreamingParser(t, effort, tools)
        deltas = [d for ch in text for d in parser.push(ch)] + parser.finish()
        assert without_ids(collect(deltas)) == without_ids(whole), name
        parser, detok = Hy3StreamingParser(t, effort, tools), IncrementalDetokenizer(tokenizer)
        ids = tokenizer.encode(text)
        streamed = [d for i in ids for d in parser.push(detok.push([i]))] + parser.push(detok.flush())
        assert without_ids(collect(streamed + parser.finish())) == without_ids(whole), name


def test_streaming_never_leaks_a_tag_fragment(tokenizer):
    t = tokenizer.hy3.tokens
    tags = [t.tag(n, c) for n in ("think", "tool_calls", "tool_call", "arg_key", "arg_value") for c in (0, 1)]
    for name, effort, tools, text, _ in examples(t):
        if "stays content" in name:
            continue
        parser = Hy3StreamingParser(t, effort, tools)
        for ch in text:
            for delta in parser.push(ch):
                piece = delta.content or delta.reasoning_content or ""
                assert not any(tag in piece for tag in tags), (name, piece)
                assert not any(tag.startswith(piece[-k:]) for tag in tags for k in range(1, len(piece) + 1)
                               if piece[-k:].startswith("<")), (name, piece)


def test_tool_calls_stream_as_each_call_finishes(tokenizer):
    t = tokenizer.hy3.tokens
    text = call_block(t, ("get_weather", [("city", "A")]), ("get_weather", [("city", "B")]))
    parser = Hy3StreamingParser(t, "no_think", WEATHER)
    first_close = text.index(t.tag("tool_call", True)) + len(t.tag("tool_call", True))
    early = parser.push(text[:first_close])
    assert [json.loads(d.tool_call["function"]["arguments"]) for d in early] == [{"city": "A"}]
    late = parser.push(text[first_close:]) + parser.finish()
    assert [json.loads(d.tool_call["function"]["arguments"]) for d in late] == [{"city": "B"}]


def test_typed_value_falls_back_to_the_string():
    assert typed_value("abc", {"type": "integer"}) == "abc"
    assert typed_value("[1]", {"type": "object"}) == "[1]"
    assert typed_value("yes", {"type": "boolean"}) == "yes"
    assert typed_value("3", {"type": ["string", "integer"]}) == "3"
