"""Hy3's chat template (built-in copy and tokenizer_config.json's) against transformers' apply_chat_template.

The real tencent/Hy3 tokenizer files are not available here: both token sets (``:opensource``-suffixed and the
bare Hy3-preview set) are built from the documented special tokens (shared/reference/hy3.md §d.1) by
:mod:`hunyuan_trtllm.synth.hy3_tokenizer`; transformers loads the same files with ``AutoTokenizer``.
"""

from __future__ import annotations

import json

import pytest

from hunyuan_trtllm.checkpoints.hy3_template import builtin_template_source, resolve_effort
from hunyuan_trtllm.checkpoints.tokenizer import HunyuanTokenizer
from hunyuan_trtllm.errors import UserError
from hunyuan_trtllm.synth.checkpoint import synth_config
from hunyuan_trtllm.synth.hy3_tokenizer import write_hy3_tokenizer_files

transformers = pytest.importorskip("transformers", reason="transformers (the test extra) renders the reference prompts")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "now", "description": "现在几点",
                                          "parameters": {"type": "object", "properties": {}}}}

CONVERSATIONS = {
    "user only": ([{"role": "user", "content": "Hello"}], None),
    "system": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi, 你好"}], None),
    "multi-turn with reasoning": ([
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "Two plus two."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "Three plus three."},
        {"role": "user", "content": "Thanks"}], None),
    "tools, calls and results": ([
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Beijing for 3 days, and the time?"},
        {"role": "assistant", "content": "I'll look that up.", "reasoning_content": "Need two tools.",
         "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": "Beijing", "days": 3}}},
             {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "call_2", "content": "10:00"},
        {"role": "user", "content": "Great"}], [WEATHER, CLOCK]),
    "tools without system": ([{"role": "user", "content": "time?"}], [CLOCK]),
}


@pytest.fixture(scope="module", params=[":opensource", ""], ids=["suffixed", "bare"])
def tokenizers(request, tmp_path_factory):
    """(ours from tokenizer_config's chat_template, ours with the built-in copy, transformers) for one token set."""
    suffix = request.param
    config = synth_config("hy3")
    root = tmp_path_factory.mktemp("hy3tok")
    with_template, builtin = root / "template", root / "builtin"
    for folder, template in ((with_template, builtin_template_source(suffix)), (builtin, None)):
        folder.mkdir()
        write_hy3_tokenizer_files(folder, config, suffix, chat_template=template)
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}))
    hf = transformers.AutoTokenizer.from_pretrained(str(with_template))
    return (HunyuanTokenizer.from_model_dir(with_template), HunyuanTokenizer.from_model_dir(builtin), hf, config,
            suffix)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("effort", ["no_think", "low", "high"])
def test_rendering_is_byte_identical_to_transformers(tokenizers, name, effort):
    ours, builtin, hf, _, _ = tokenizers
    messages, tools = CONVERSATIONS[name]
    expected = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True,
                                      reasoning_effort=effort)
    assert ours.hy3.render(messages, tools, reasoning_effort=effort) == expected
    assert builtin.hy3.render(messages, tools, reasoning_effort=effort) == expected
    assert ours.encode(expected) == hf(expected, add_special_tokens=False)["input_ids"]


def test_layout_of_the_prompt(tokenizers):
    ours, _, _, config, suffix = tokenizers
    messages, tools = CONVERSATIONS["tools, calls and results"]
    prompt = ours.hy3.render(messages, tools, reasoning_effort="high")
    s = suffix
    assert prompt.startswith(f"<｜hy_begin▁of▁sentence{s}｜>Use tools.\n\n# Tools\n\n")
    assert f"</tool_calls{s}><｜reasoning_mode{s}｜>reasoning_effort:high<｜hy_User{s}｜>Weather" in prompt
    # tools present: earlier reasoning is kept; values: strings verbatim, numbers as JSON
    assert (f"<｜hy_Assistant{s}｜><think{s}>Need two tools.</think{s}>I'll look that up.<tool_calls{s}>\n"
            f"<tool_call{s}>get_weather<tool_sep{s}>\n<arg_key{s}>city</arg_key{s}>\n<arg_value{s}>Beijing"
            f"</arg_value{s}>\n<arg_key{s}>days</arg_key{s}>\n<arg_value{s}>3</arg_value{s}>\n</tool_call{s}>\n"
            f"<tool_call{s}>now<tool_sep{s}>\n</tool_call{s}>\n</tool_calls{s}><｜hy_eos{s}｜>") in prompt
    assert (f"<tool_responses{s}>\n<tool_response{s}>\n{{\"temp\": 21}}\n</tool_response{s}>\n<tool_response{s}>\n"
            f"10:00\n</tool_response{s}>\n</tool_responses{s}><｜hy_User{s}｜>Great") in prompt
    assert prompt.endswith(f"<｜hy_Assistant{s}｜><think{s}>")
    no_think = ours.hy3.render(CONVERSATIONS["multi-turn with reasoning"][0])
    assert no_think.endswith(f"<think{s}></think{s}>")  # default effort no_think
    # no tools: reasoning before the last user turn is dropped
    assert f"<think{s}></think{s}>4<｜hy_eos{s}｜>" in no_think and "Two plus two" not in no_think
    assert ours.stop_token_ids == (config["eos_token_id"],) and ours.eos_token_id == config["eos_token_id"]


def test_effort_resolution_and_errors(tokenizers):
    assert resolve_effort(None, None) == "no_think"
    assert resolve_effort({"reasoning_effort": "high"}, "low") == "high"
    assert resolve_effort({}, "low") == "low"
    with pytest.raises(ValueError, match="medium"):
        resolve_effort(None, "medium")
    ours = tokenizers[0]
    with pytest.raises(ValueError, match="arguments"):
        ours.hy3.render([{"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "[1]"}}]}])
    # arguments as a JSON string render like the object
    as_text = [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}]
    as_dict = [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]
    assert ours.hy3.render(as_text) == ours.hy3.render(as_dict)


def test_suffix_is_read_from_the_tokenizer(tmp_path):
    config = synth_config("hy3")
    write_hy3_tokenizer_files(tmp_path, config, ":6124c78e")
    tok = HunyuanTokenizer.from_model_dir(tmp_path)
    assert tok.hy3.tokens.suffix == ":6124c78e" and "<think:6124c78e>" in tok.hy3.render([{"role": "user",
                                                                                           "content": "x"}])
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, "token_suffix": ":opensource"}))
    with pytest.raises(UserError, match="token_suffix ':opensource' given"):
        HunyuanTokenizer.from_model_dir(tmp_path)


def test_full_size_vocabulary_and_stop_token(tmp_path):
    """Hy3's id space (vocab 120832, bos 120000, eos 120025) through the tokenizers backend; generation stops on
    the tokenizer's EOS (generation_config's eos_token_id and tokenizer_config's eos_token agree)."""
    config = synth_config("hy3", "full-width")
    write_hy3_tokenizer_files(tmp_path, config)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": config["eos_token_id"]}))
    tok = HunyuanTokenizer.from_model_dir(tmp_path)
    assert tok.vocab_size == 120832 and tok.stop_token_ids == (120025,) and tok.eos_token_id == 120025
    assert tok.token_id("<｜hy_begin▁of▁sentence:opensource｜>") == config["bos_token_id"] == 120000
    text = "你好 world <think:opensource>x"
    assert tok.decode(tok.encode(text)) == text


def test_user_text_spelling_structural_tokens_stays_text(tokenizers):
    """A user who types Hy3's structural tokens (turn markers, think and tool-call tags) cannot forge a turn: the
    only control ids in the prompt are the template's own, and the decoded prompt is the rendering."""
    ours, _, _, _, _ = tokenizers
    forged = "".join([ours.hy3.tokens.bos, ours.hy3.tokens.eos, *ours.hy3.tokens.structural()])
    messages = [{"role": "system", "content": "sys " + forged}, {"role": "user", "content": "hi " + forged}]
    chat = ours.protect_chat(messages, None)
    ids = ours.encode_prompt(ours.render_chat(chat.messages, chat.tools), chat.sentinel)
    plain = ours.encode_prompt(ours.render_chat([{"role": "system", "content": "sys"},
                                                 {"role": "user", "content": "hi"}]), None)
    control = [i for i in ids if i in ours.special_ids]
    assert control == [i for i in plain if i in ours.special_ids]  # the template's structure, nothing more
    assert ours.decode(ids) == ours.render_chat(messages)


def test_parser_tags_survive_skip_special_tokens(tokenizers):
    ours, _, _, _, _ = tokenizers
    t = ours.hy3.tokens
    text = f"{t.tag('think')}a{t.tag('think', True)}{t.tag('tool_calls')}{t.tag('tool_call')}f{t.tag('tool_sep')}"
    assert ours.decode(ours.encode(text + t.eos), skip_special_tokens=True) == text
