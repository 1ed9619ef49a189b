"""Reading the standard SFT shapes, stable ids, duplicates, and bad input."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import write_jsonl
from winnow.data import Example, FieldMap, load_examples, read_examples, read_weights, write_examples
from winnow.errors import InputError


def test_prompt_completion_messages_and_alpaca(tmp_path):
    rows = [
        {"prompt": "Hi?", "completion": "Hello.", "topic": "greet"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
                      {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                      {"role": "assistant", "content": "A2"}]},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say yes", "input": "", "output": "yes"},
        {"prompt": [{"role": "user", "content": "conv?"}], "completion": [{"role": "assistant", "content": "ok"}]},
    ]
    exs = read_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [e.response for e in exs] == ["Hello.", "A2", "cat", "yes", "ok"]
    assert exs[0].metadata == {"topic": "greet"}
    assert exs[1].layout == "messages" and len(exs[1].messages) == 5 and exs[1].prompt == "Q2"
    assert exs[2].prompt == "Translate\n\nchat" and exs[3].prompt == "Say yes"


def test_explicit_field_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Why?", "answer": "Because.", "id": 7}])
    (ex,) = read_examples(path, FieldMap("question", "answer"))
    assert (ex.id, ex.prompt, ex.response) == ("7", "Why?", "Because.")
    with pytest.raises(InputError, match='d.jsonl:1: field "answer": missing'):
        read_examples(write_jsonl(tmp_path / "d.jsonl", [{"question": "Why?"}]), FieldMap("question", "answer"))


def test_ids_stable_under_reordering(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
    ids = {e.prompt: e.id for e in read_examples(write_jsonl(tmp_path / "a.jsonl", rows))}
    random.Random(1).shuffle(rows)
    again = {e.prompt: e.id for e in read_examples(write_jsonl(tmp_path / "b.jsonl", rows))}
    assert ids == again and len(set(ids.values())) == 20


def test_duplicates_dropped_and_reported(tmp_path):
    rows = [{"prompt": "q", "completion": "a"}, {"prompt": "r", "completion": "b"}, {"prompt": "q", "completion": "a"}]
    data = load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(data.examples) == 2 and data.records == 3
    assert data.duplicates == [(3, 1, data.examples[0].id)]


def test_conflicting_explicit_ids(tmp_path):
    rows = [{"id": "x", "prompt": "q", "completion": "a"}, {"id": "x", "prompt": "q", "completion": "other"}]
    with pytest.raises(InputError, match='d.jsonl:2: field "id": id \'x\' already used by line 1'):
        read_examples(write_jsonl(tmp_path / "d.jsonl", rows))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"prompt": "q", "completion": "a"}\n{"prompt": "q2", \n', r"d.jsonl:2: invalid JSON"),
        (b'{"prompt": "q", "completion": "a"}\n{"completion": "a"}\n', r'd.jsonl:2: field "prompt": missing'),
        (b'{"prompt": "q", "completion": "  "}\n', r'd.jsonl:1: field "completion": empty'),
        (b'{"prompt": "q", "completion": 3}\n', r'd.jsonl:1: field "completion": expected a string'),
        (b'{"prompt": "q", "completion": "a"}\n{"prompt": "\xff\xfe"}\n', r"d.jsonl:2: not valid UTF-8"),
        (b"", r"d.jsonl: the file is empty"),
        (b"\n\n", r"d.jsonl: the file is empty"),
        (b'{"text": "no shape"}\n', r"d.jsonl:1: no prompt/response found"),
        (b'[1, 2]\n', r"d.jsonl:1: expected a JSON object"),
        (b'{"messages": [{"role": "user", "content": "q"}]}\n',
         r'd.jsonl:1: field "messages\[0\].role": the last message must be the assistant'),
        (b'{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
         r'field "messages\[0\].role": unknown role'),
        (b'{"prompt": "q", "completion": "a", "weight": -1}\n', r'd.jsonl:1: field "weight"'),
    ],
)
def test_bad_input_names_file_line_field(tmp_path, content, expected):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        read_examples(path)


def test_json_array_parquet_and_dataset_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "extra": i} for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    expect = read_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    for name in ("d.json", "d.parquet", "ds"):
        assert read_examples(tmp_path / name) == expect, name
    bad = [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": None}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(InputError, match=r'bad.parquet: record 2: field "completion": missing'):
        read_examples(tmp_path / "bad.parquet")


def test_write_read_round_trip_keeps_shape_weight_and_extras(tmp_path):
    exs = [
        Example.from_pair("q", "a", metadata={"label": "good"}, weight=0.5),
        Example.from_pair("q2", "a2", system="sys"),
        Example(id="m", messages=({"role": "user", "content": "u"}, {"role": "assistant", "content": "v"}),
                layout="messages", source="regenerated", parent_id="p"),
    ]
    write_examples(tmp_path / "out.jsonl", exs)
    assert read_examples(tmp_path / "out.jsonl") == exs
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_read_weights_errors(tmp_path):
    assert read_weights(write_jsonl(tmp_path / "w.jsonl", [{"id": "a", "weight": 0.5}])) == {"a": 0.5}
    with pytest.raises(InputError, match='w.jsonl:2: field "weight"'):
        read_weights(write_jsonl(tmp_path / "w.jsonl", [{"id": "a", "weight": 1}, {"id": "b", "weight": "x"}]))
