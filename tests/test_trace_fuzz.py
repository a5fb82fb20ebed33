"""The trace loader on hostile input: random bytes and mutated valid files give a clean UserError or a valid trace."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moespeq.errors import UserError
from moespeq.spec import ModelSpec
from moespeq.trace import read_trace, write_trace
from moespeq.traces.synth import SynthConfig, synthesize

SPEC = ModelSpec(name="tiny", arch="mixtral", layers=2, experts=4, top_k=2, hidden=128, moe_ffn=256,
                 heads=2, kv_heads=2, head_dim=64, vocab=100)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "valid.parquet"
    write_trace(synthesize(SynthConfig(model=SPEC, seqs=1, tokens=6, prompt_len=2, k_max=2)), path)
    return path.read_bytes()


def load(tmp_path, data: bytes) -> None:
    path = tmp_path / "case.parquet"
    path.write_bytes(data)
    try:
        read_trace(path)
    except UserError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(tmp_path, data):
    load(tmp_path, data)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=8),
       cut=st.none() | st.integers(min_value=0))
def test_mutated_valid_files(tmp_path, valid_bytes, edits, cut):
    data = bytearray(valid_bytes)
    for offset, value in edits:
        data[offset % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    load(tmp_path, bytes(data))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key_index=st.integers(min_value=0), value=JSON_VALUES, in_model=st.booleans())
def test_mutated_metadata(tmp_path, valid_bytes, key_index, value, in_model):
    """Type confusion in the JSON metadata (the part a hand-edited trace gets wrong) stays a clean error."""
    import json

    import pyarrow.parquet as pq

    from moespeq.trace import META_KEY

    src = tmp_path / "src.parquet"
    src.write_bytes(valid_bytes)
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[META_KEY])
    target = meta["model"] if in_model else meta
    key = sorted(target)[key_index % len(target)]
    target[key] = value
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), tmp_path / "case.parquet")
    try:
        read_trace(tmp_path / "case.parquet")
    except UserError as exc:
        assert "\n" not in str(exc)
