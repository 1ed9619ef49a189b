"""Read SFT data (JSONL, JSON, Parquet, local HF dataset folders) into ``Example`` records.

Shapes recognised per record: ``messages``; ``prompt``/``completion`` (strings or
conversational lists, as in TRL); Alpaca ``instruction`` (+ ``input``) -> ``output``; or any
pair of fields named by ``FieldMap``. Every problem is an ``InputError`` naming the file, the
line (or record) and the field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from winnow.data.example import ROLES, Example, Message, content_id
from winnow.errors import InputError

log = logging.getLogger(__name__)

RESERVED = {"id", "weight", "source", "parent_id"}


@dataclass(frozen=True)
class FieldMap:
    """Which record fields hold the prompt and the response (``None``: recognise the shape)."""

    prompt: str | None = None
    """Field with the prompt text, e.g. ``question``."""
    response: str | None = None
    """Field with the response text, e.g. ``answer``."""

    def __post_init__(self) -> None:
        if (self.prompt is None) != (self.response is None):
            raise ValueError("name both the prompt field and the response field, or neither")


@dataclass
class LoadedData:
    """Examples read from one source, with what was noticed on the way."""

    path: str
    examples: list[Example]
    records: int
    duplicates: list[tuple[int, int, str]] = field(default_factory=list)
    """(location, location of the first copy, id) of each exact duplicate that was dropped."""
    unit: str = "line"


def load_examples(path: str | Path, fields: FieldMap = FieldMap(), *, dedupe: bool = True) -> LoadedData:
    """Read every record of ``path`` into examples, dropping (and reporting) exact duplicates.

    Raises:
        InputError: a missing or empty file, bad JSON or bytes, a missing or empty field,
            conflicting ids, or no usable example.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    unit = "line" if path.suffix in {".jsonl", ".ndjson"} else "record"
    examples: list[Example] = []
    seen: dict[str, tuple[int, str]] = {}
    dupes: list[tuple[int, int, str]] = []
    n = 0
    for loc, rec in _records(path):
        n += 1
        ex = parse_record(rec, fields, path=path, loc=loc, unit=unit)
        key = content_id(ex.messages)
        if ex.id in seen and seen[ex.id][1] != key:
            first = seen[ex.id][0]
            raise InputError(path, f"id {ex.id!r} already used by {unit} {first} with other content",
                             line=loc, field="id", unit=unit)
        if dedupe and (ex.id in seen or key in seen):
            dupes.append((loc, seen.get(ex.id, seen.get(key))[0], ex.id))
            continue
        seen[ex.id] = seen[key] = (loc, key)
        examples.append(ex)
    if n == 0:
        raise InputError(path, "the file holds no records")
    if dupes:
        log.warning("%s: dropped %d exact duplicate(s), first at %s %d", path, len(dupes), unit, dupes[0][0])
    return LoadedData(str(path), examples, n, dupes, unit)


def read_examples(path: str | Path, fields: FieldMap = FieldMap()) -> list[Example]:
    """Shorthand for ``load_examples(path, fields).examples``."""
    return load_examples(path, fields).examples


# --- record sources ---------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.is_dir():
        yield from _hf_dir(path)
    elif path.suffix == ".parquet":
        yield from _parquet(path)
    elif path.suffix == ".json":
        yield from _json_array(path)
    else:
        yield from _jsonl(path)


def _decode(path: Path, raw: bytes, line: int | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line=line) from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = path.read_bytes()
    if not raw.strip():
        raise InputError(path, "the file is empty")
    for i, line in enumerate(raw.splitlines(), start=1):
        text = _decode(path, line, i).strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(path, f"invalid JSON ({e.msg} at column {e.colno})", line=i) from None
        if not isinstance(rec, dict):
            raise InputError(path, f"expected a JSON object, got {type(rec).__name__}", line=i)
        yield i, rec


def _json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    text = _decode(path, path.read_bytes(), None)
    if not text.strip():
        raise InputError(path, "the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e.msg})", line=e.lineno) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON array of objects (or JSON lines in a .jsonl file)")
    for i, rec in enumerate(data, start=1):
        if not isinstance(rec, dict):
            raise InputError(path, f"expected a JSON object, got {type(rec).__name__}", line=i, unit="record")
        yield i, rec


def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(path, f"cannot read Parquet: {e}") from None
    yield from enumerate(table.to_pylist(), start=1)


def _hf_dir(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise InputError(path, f"not a dataset folder saved with save_to_disk: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise InputError(path, f"dataset has splits {sorted(ds)}; expected a 'train' split")
        ds = ds["train"]
    yield from enumerate(ds, start=1)


# --- one record -> Example --------------------------------------------------------------------


def parse_record(
    rec: dict[str, Any], fields: FieldMap, *, path: Path, loc: int, unit: str = "line"
) -> Example:
    """Turn one raw record into an ``Example`` or raise an ``InputError`` naming the field."""

    def fail(msg: str, fld: str | None = None) -> InputError:
        return InputError(path, msg, line=loc, field=fld, unit=unit)

    def text(name: str) -> str:
        if name not in rec or rec[name] is None:
            raise fail("missing", name)
        value = rec[name]
        if not isinstance(value, str):
            raise fail(f"expected a string, got {type(value).__name__}", name)
        if not value.strip():
            raise fail("empty", name)
        return value

    used: set[str]
    layout = "prompt_completion"
    if fields.prompt is not None:
        messages = _pair(text(fields.prompt), text(fields.response))
        used = {fields.prompt, fields.response}
    elif "messages" in rec:
        messages = _messages(rec["messages"], "messages", fail)
        layout, used = "messages", {"messages"}
    elif "prompt" in rec or "completion" in rec:
        messages = _prompt_completion(rec, fail, text)
        used = {"prompt", "completion"}
    elif "instruction" in rec and "output" in rec:
        prompt = text("instruction")
        extra = rec.get("input")
        if isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        messages = _pair(prompt, text("output"))
        used = {"instruction", "input", "output"}
    else:
        raise fail(
            f"no prompt/response found (fields: {sorted(rec)}); expected 'messages', "
            "'prompt'+'completion' or 'instruction'+'output', or name them with "
            "--prompt-field/--response-field"
        )
    rid = rec.get("id")
    if rid is not None and (not isinstance(rid, str | int) or str(rid).strip() == ""):
        raise fail("expected a non-empty string or integer", "id")
    weight = rec.get("weight", 1.0)
    if not isinstance(weight, int | float) or weight != weight or weight < 0:
        raise fail(f"expected a non-negative number, got {weight!r}", "weight")
    meta = {k: v for k, v in rec.items() if k not in used and k not in RESERVED}
    return Example(
        id=str(rid) if rid is not None else content_id(messages),
        messages=messages,
        source=str(rec.get("source") or "original"),
        parent_id=rec.get("parent_id"),
        weight=float(weight),
        metadata=meta,
        layout=layout,  # type: ignore[arg-type]
    )


def _pair(prompt: str, response: str) -> tuple[Message, ...]:
    return ({"role": "user", "content": prompt}, {"role": "assistant", "content": response})


def _messages(
    value: Any, name: str, fail: Any, *, final_assistant: bool = True, need_user: bool = True
) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise fail("expected a non-empty list of {role, content} messages", name)
    out: list[Message] = []
    for j, m in enumerate(value):
        where = f"{name}[{j}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise fail("expected an object with 'role' and 'content'", where)
        if m["role"] not in ROLES:
            raise fail(f"unknown role {m['role']!r} (expected one of {', '.join(ROLES)})", f"{where}.role")
        if not isinstance(m["content"], str):
            raise fail(f"expected string content, got {type(m['content']).__name__}", f"{where}.content")
        if m["role"] == "assistant" and not m["content"].strip():
            raise fail("empty assistant response", f"{where}.content")
        out.append({"role": m["role"], "content": m["content"]})
    if final_assistant:
        if out[-1]["role"] != "assistant":
            raise fail("the last message must be the assistant's response", f"{name}[{len(out) - 1}].role")
    if need_user and not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise fail("no non-empty user message", name)
    return tuple(out)


def _prompt_completion(rec: dict[str, Any], fail: Any, text: Any) -> tuple[Message, ...]:
    prompt, completion = rec.get("prompt"), rec.get("completion")
    if isinstance(prompt, list):
        head = _messages(prompt, "prompt", fail, final_assistant=False)
    else:
        head = ({"role": "user", "content": text("prompt")},)
    if isinstance(completion, list):
        tail = _messages(completion, "completion", fail, need_user=False)
    else:
        tail = ({"role": "assistant", "content": text("completion")},)
    return head + tail


def read_weights(path: str | Path) -> dict[str, float]:
    """Read ``{"id", "weight"}`` JSON lines (e.g. ``weights.jsonl`` of ``winnow weigh``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    out: dict[str, float] = {}
    for loc, rec in _jsonl(path):
        for name in ("id", "weight"):
            if name not in rec:
                raise InputError(path, "missing", line=loc, field=name)
        w = rec["weight"]
        if not isinstance(w, int | float) or isinstance(w, bool) or not (0 <= w < float("inf")):
            raise InputError(path, f"expected a finite non-negative number, got {w!r}", line=loc, field="weight")
        out[str(rec["id"])] = float(w)
    return out


def check_weights_cover(weights: dict[str, float], examples: list[Example], weights_path: str | Path) -> None:
    """Raise if any example has no weight, naming how many and the first few ids."""
    missing = [ex.id for ex in examples if ex.id not in weights]
    if missing:
        raise InputError(weights_path, f"{len(missing)} of {len(examples)} example ids have no weight "
                         f"(first: {', '.join(missing[:3])}); was it computed for another data file?",
                         field="id")


def read_scores(path: str | Path) -> dict[str, float]:
    """Selection scores of a ``weights.jsonl``: its ``score`` field, else its ``weight``.

    A row without a score (an example that could not be scored) ranks last.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    out: dict[str, float] = {}
    for loc, rec in _jsonl(path):
        if "id" not in rec:
            raise InputError(path, "missing", line=loc, field="id")
        name = "score" if "score" in rec else "weight"
        value = rec.get(name)
        if value is None:
            out[str(rec["id"])] = float("-inf")
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
            raise InputError(path, f"expected a number, got {value!r}", line=loc, field=name)
        out[str(rec["id"])] = float(value)
    return out
