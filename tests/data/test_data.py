"""wind_jax.data: JSONL validation, tfds array_record round trip (no TensorFlow), loaders."""
import json
import sys

import numpy as np
import pytest

from wind_jax import data


def byte_tokenizer(text):
    """Independent reference tokenizer: UTF-8 bytes + 1 (0 is padding)."""
    return [b + 1 for b in text.encode("utf-8")]


PROMPTS = [
    {"prompt": "Hello, world"},
    {"prompt": "Grüße aus Köln ☃ — 你好 🙂"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Was ist π?"}]},
    {"prompt": "x" * 20},
    {"prompt": "short"},
]

PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5 ☹"},
    {"prompt": "Name a colour", "responses": ["red", "blue", "grün"], "scores": [0.2, -1.0, 3.5]},
    {"messages": [{"role": "user", "content": "hi"}], "chosen": "hello!", "rejected": "go away"},
]


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return str(path)


def test_prompts_round_trip_unicode_and_chat(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    builder = data.build("prompts", path, str(tmp_path / "tfds"))
    assert "tensorflow" not in sys.modules  # array_record path needs no TensorFlow
    source = data.load_source(builder.data_dir, process_index=0, process_count=1)
    assert len(source) == len(PROMPTS)
    by_line = {int(r["line"]): r for r in (source[i] for i in range(len(source)))}
    for line, row in enumerate(PROMPTS, start=1):
        rec = by_line[line]
        if "prompt" in row:
            assert rec["prompt"].decode() == row["prompt"]
            assert rec["messages"].decode() == ""
        else:
            assert json.loads(rec["messages"].decode()) == row["messages"]
            assert rec["prompt"].decode() == data.render_chat(row["messages"])
    assert data.skipped(builder)["total"] == 0


def test_preference_pairs_round_trip_and_loader(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    builder = data.build("preference_pairs", path, str(tmp_path / "tfds"))
    source = builder.as_data_source(split="train")
    recs = {int(source[i]["line"]): source[i] for i in range(len(source))}
    assert [r.decode() for r in recs[1]["responses"]] == ["4", "5 ☹"]
    np.testing.assert_array_equal(recs[1]["scores"], [1.0, 0.0])
    assert [r.decode() for r in recs[2]["responses"]] == PAIRS[1]["responses"]

    loader = data.PreferenceLoader(source, byte_tokenizer, batch_size=3, buckets=(16, 64), eos_id=300,
                                   source_name=path)
    (batch,) = list(loader.epoch(0))
    for row, line in enumerate(batch["line"]):
        rec = PAIRS[line - 1]
        prompt = rec.get("prompt") or data.render_chat(rec["messages"])
        if "chosen" in rec:
            chosen, rejected = rec["chosen"], rec["rejected"]
        else:
            chosen = rec["responses"][int(np.argmax(rec["scores"]))]
            rejected = rec["responses"][int(np.argmin(rec["scores"]))]
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            toks = batch["tokens"][name][row]
            resp = toks[batch["response_mask"][name][row]]
            assert list(resp) == byte_tokenizer(text) + [300]
            real = toks[batch["attention_mask"][name][row]]
            assert list(real) == byte_tokenizer(prompt) + byte_tokenizer(text) + [300]
    assert batch["tokens"]["chosen"].shape == (3, 64)


def test_prompt_loader_buckets_shuffle_and_padding(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    source = data.build("prompts", path, str(tmp_path / "tfds")).as_data_source(split="train")
    loader = data.PromptLoader(source, byte_tokenizer, batch_size=2, buckets=(8, 32, 128), seed=3,
                               drop_remainder=False)
    e0, e0_again, e1 = list(loader.epoch(0)), list(loader.epoch(0)), list(loader.epoch(1))
    lines0 = np.concatenate([b["line"] for b in e0])
    np.testing.assert_array_equal(lines0, np.concatenate([b["line"] for b in e0_again]))
    assert sorted(lines0) == [1, 2, 3, 4, 5]
    assert not np.array_equal(lines0, np.concatenate([b["line"] for b in e1]))  # seeds (3,0) vs (3,1)
    for b in e0:
        longest = b["lengths"].max()
        assert b["tokens"].shape[1] == min(x for x in (8, 32, 128) if x >= longest)
        for row in range(len(b["line"])):
            rec = PROMPTS[b["line"][row] - 1]
            text = rec.get("prompt") or data.render_chat(rec["messages"])
            assert list(b["tokens"][row][b["attention_mask"][row]]) == byte_tokenizer(text)
            assert b["attention_mask"][row][-1]  # left padding: last position is real


def test_per_process_shards_are_disjoint_and_cover(tmp_path):
    rows = [{"prompt": f"prompt number {i}"} for i in range(10)]
    builder = data.build("prompts", write_jsonl(tmp_path / "p.jsonl", rows), str(tmp_path / "tfds"))
    parts = [data.load_source(builder, process_index=i, process_count=2) for i in range(2)]
    lines = [{int(p[j]["line"]) for j in range(len(p))} for p in parts]
    assert len(parts[0]) == len(parts[1]) == 5
    assert lines[0].isdisjoint(lines[1]) and lines[0] | lines[1] == set(range(1, 11))
    with pytest.raises(ValueError, match="process_index"):
        data.process_split("train", 2, 2)


@pytest.mark.parametrize(
    "bad_line,kind,match",
    [
        ('{"prompt": "unterminated', "prompts", "invalid JSON"),
        ('{"text": "no prompt field"}', "prompts", 'missing field "prompt"'),
        ('{"prompt": "   "}', "prompts", "empty"),
        ('[1, 2]', "prompts", "JSON object"),
        ('{"messages": [{"role": "user"}]}', "prompts", "messages"),
        ('{"prompt": "p", "chosen": "a"}', "preference_pairs", '"rejected"'),
        ('{"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}', "preference_pairs", "scores"),
        ('{"prompt": "p", "responses": ["a", "b"], "scores": [1.0, 1.0]}', "preference_pairs", "equal"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, kind, match):
    good = PROMPTS[:2] if kind == "prompts" else PAIRS[:2]
    path = write_jsonl(tmp_path / "bad.jsonl", good, [bad_line])
    with pytest.raises(ValueError, match=match) as info:
        data.build(kind, path, str(tmp_path / "tfds"))
    assert f"{path}:3:" in str(info.value)


def test_skip_flag_counts_malformed(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", PROMPTS[:2], ['{"prompt": ""}', "not json", '{"x": 1}'])
    builder = data.build("prompts", path, str(tmp_path / "tfds"), skip_invalid=True)
    assert len(builder.as_data_source(split="train")) == 2
    info = data.skipped(builder)
    assert info["total"] == 3
    assert info["by_kind"] == {"empty_prompt": 1, "bad_json": 1, "missing_field": 1}
    assert f"{path}:4:" in info["first_messages"][1]


def test_overlong_prompt_errors_or_is_counted_never_truncated(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    source = data.build("prompts", path, str(tmp_path / "tfds")).as_data_source(split="train")
    strict = data.PromptLoader(source, byte_tokenizer, batch_size=1, buckets=(16,), source_name=path)
    with pytest.raises(ValueError, match=r"p.jsonl:\d+: prompt has \d+ tokens > largest bucket 16"):
        list(strict.epoch(0))
    lenient = data.PromptLoader(source, byte_tokenizer, batch_size=1, buckets=(16,), on_overlong="skip")
    kept = list(lenient.epoch(0))
    expected_kept = [r for r in PROMPTS if len(byte_tokenizer(r.get("prompt") or data.render_chat(
        r["messages"]))) <= 16]
    assert len(kept) == len(expected_kept)
    assert lenient.skips.total == len(PROMPTS) - len(expected_kept)
    assert all(b["lengths"][0] == b["attention_mask"][0].sum() for b in kept)
    with pytest.raises(ValueError, match="max_prompt_chars"):
        data.build("prompts", path, str(tmp_path / "tfds2"), max_prompt_chars=10)


def test_skip_invalid_prints_n_of_m_with_reasons(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", PROMPTS[:2], ['{"prompt": ""}', "not json"])
    data.build("prompts", path, str(tmp_path / "tfds"), skip_invalid=True)
    out = capsys.readouterr().out
    assert f"{path}: 2 of 4 lines skipped: bad_json 1, empty_prompt 1 (first: {path}:3:" in out


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: the prompts file is empty"):
        data.build("prompts", str(path), str(tmp_path / "tfds"))


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_every_line_invalid_names_the_file(tmp_path, skip_invalid):
    path = write_jsonl(tmp_path / "junk.jsonl", [], ["nope", '{"text": 1}'])
    match = "junk.jsonl:1: invalid JSON" if not skip_invalid else "junk.jsonl: no usable record.*2 of 2 lines"
    with pytest.raises(ValueError, match=match):
        data.build("prompts", path, str(tmp_path / "tfds"), skip_invalid=skip_invalid)
    assert not (tmp_path / "tfds").exists()


def test_missing_file_is_checked_without_tfds(tmp_path):
    with pytest.raises(ValueError, match=f"prompts file not found: {tmp_path}/nowhere.jsonl"):
        data.check_jsonl(str(tmp_path / "nowhere.jsonl"))
    report = data.check_jsonl(write_jsonl(tmp_path / "ok.jsonl", PROMPTS, ["{"]), skip_invalid=True)
    assert (report.records, report.lines, report.skips.total) == (len(PROMPTS), len(PROMPTS) + 1, 1)


def test_non_utf8_line_names_file_and_line_and_writes_nothing(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n{"prompt": "also fine"}\n')
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=rf"{path}:2: not valid UTF-8 \(byte 0xe9"):
        data.build("prompts", str(path), str(data_dir))
    assert not data_dir.exists() or not any(data_dir.rglob("*"))
    builder = data.build("prompts", str(path), str(data_dir), skip_invalid=True)
    assert sorted(int(r["line"]) for r in builder.as_data_source(split="train")) == [1, 3]
    assert data.skipped(builder)["by_kind"] == {"bad_utf8": 1}


def test_failed_generation_leaves_no_partial_dataset(tmp_path, monkeypatch):
    from wind_jax.data import builders

    def broken(*args, **kwargs):
        yield {"prompt": "p", "messages": "", "line": 1}
        raise OSError("disk full (simulated)")

    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    monkeypatch.setattr(builders, "read_records", broken)
    with pytest.raises(OSError, match="simulated"):
        data.build("prompts", path, str(tmp_path / "tfds"))
    assert [p.name for p in (tmp_path / "tfds").iterdir()] == []  # no staging dir, no dataset dir
    monkeypatch.undo()
    builder = data.build("prompts", path, str(tmp_path / "tfds"))
    assert len(builder.as_data_source(split="train")) == len(PROMPTS)


def test_local_build_prints_no_tfds_download_lines(tmp_path, capfd, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    data.build("prompts", path, str(tmp_path / "tfds"))
    data.build("prompts", path, str(tmp_path / "tfds"))  # reuse
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    for line in ("Downloading and preparing", "custom data configuration", "downloaded and prepared",
                 "Generating splits", "Variant folder"):
        assert line not in text


def test_every_prompt_overlong_raises_some_overlong_prints_count(tmp_path, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    source = data.build("prompts", path, str(tmp_path / "tfds")).as_data_source(split="train")
    none_fit = data.PromptLoader(source, byte_tokenizer, batch_size=2, buckets=(4,), on_overlong="skip",
                                 drop_remainder=False, source_name=path)
    with pytest.raises(ValueError, match=f"{path}: no usable example in 5 records"):
        next(iter(none_fit.epoch(0)))
    n_long = sum(len(byte_tokenizer(r.get("prompt") or data.render_chat(r["messages"]))) > 16 for r in PROMPTS)
    some = data.PromptLoader(source, byte_tokenizer, batch_size=8, buckets=(16,), on_overlong="skip",
                             drop_remainder=False, source_name=path)
    (batch,) = list(some.epoch(0))
    assert len(batch["line"]) == len(PROMPTS) - n_long
    assert f"{path}: {n_long} of 5 examples skipped: longer than the largest bucket 16" in capsys.readouterr().out


@pytest.mark.parametrize("returns_ids", [False, True])
def test_plain_prompts_get_the_chat_template(tmp_path, returns_ids):
    path = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    source = data.build("prompts", path, str(tmp_path / "tfds")).as_data_source(split="train")

    def template(messages):
        text = "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"
        return byte_tokenizer(text) if returns_ids else text

    loader = data.PromptLoader(source, byte_tokenizer, batch_size=5, buckets=(256,), chat_template=template)
    (batch,) = list(loader.epoch(0))
    for row, line in enumerate(batch["line"]):
        rec = PROMPTS[line - 1]
        conv = rec.get("messages") or [{"role": "user", "content": rec["prompt"]}]
        expected = "".join(f"[{m['role']}]{m['content']}" for m in conv) + "[assistant]"
        assert list(batch["tokens"][row][batch["attention_mask"][row]]) == byte_tokenizer(expected)


def test_sharegpt_first_human_turns_from_a_truncated_file(tmp_path):
    convs = [{"id": "a", "conversations": [{"from": "human", "value": " What is 2+2? "},
                                          {"from": "gpt", "value": "4"}]},
             {"id": "b", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x" * 50}]},
             {"id": "c", "conversations": [{"from": "human", "value": "y" * 500}]},
             {"id": "d", "conversations": [{"from": "human", "value": "Grüße ☃"}]}]
    text = json.dumps(convs, ensure_ascii=False)
    src = tmp_path / "sg.json"
    src.write_text(text[: text.rindex('{"id": "d"') + 30], encoding="utf-8")  # cut inside the last object
    from wind_jax.data.sharegpt import first_human_turns

    assert first_human_turns(str(src), 10, max_chars=100) == ["What is 2+2?", "x" * 50]
    src.write_text(text, encoding="utf-8")
    out = data.sharegpt_prompts(str(tmp_path / "out" / "p.jsonl"), 3, max_chars=100, json_path=str(src))
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert rows == [{"messages": [{"role": "user", "content": c}]} for c in ("What is 2+2?", "x" * 50, "Grüße ☃")]
    report = data.check_jsonl(out)
    assert (report.records, report.skips.total) == (3, 0)


def test_skips_are_reported_before_a_batch_even_when_the_pass_is_not_finished(capsys):
    source = [{"prompt": "y" * 40, "messages": "", "line": 1}] + [
        {"prompt": f"p{i}", "messages": "", "line": i + 2} for i in range(6)]
    seed = next(s for s in range(100) if list(data.shuffled_indices(7, s, 0)).index(0) < 2)  # long one early
    loader = data.PromptLoader(source, byte_tokenizer, batch_size=2, buckets=(8,), on_overlong="skip",
                               source_name="src.jsonl", seed=seed)
    batches = loader.epoch(0)
    next(batches)
    assert capsys.readouterr().out == "src.jsonl: 1 of 3 examples read so far skipped: longer than the largest " \
        "bucket 8 tokens\n"
    assert len(list(batches)) == 2
    assert capsys.readouterr().out == "src.jsonl: 1 of 7 examples skipped: longer than the largest bucket 8 tokens\n"
