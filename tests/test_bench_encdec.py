"""scripts/bench_encdec.py end to end at toy sizes: its records, plots and the memory trend."""

import json

import pytest

from tests.conftest import run_script


# A minute or two of compiling benchmark shapes; the encoder-decoder's memory and decoding
# themselves are tested in tests/test_encoder_decoder.py.
@pytest.mark.slow
def test_memory_and_decoding_records(tmp_path):
    out = tmp_path / "memory.json"
    run = run_script(
        "bench_encdec.py", ["memory", "--lengths", "128,256", "--cross", "lsh", "--out", str(out)]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["cross"], r["seq_len"]) for r in records] == [("lsh", 128), ("lsh", 256)]
    assert all(r["temp_bytes"] > 0 and r["device"] == "cpu" for r in records)
    assert records[1]["temp_bytes"] > records[0]["temp_bytes"]
    assert out.with_suffix(".png").stat().st_size > 10_000

    out = tmp_path / "decode.json"
    args = ["decode", "--source_len", "128", "--target_len", "8", "--uncached_tokens", "2"]
    run = run_script("bench_encdec.py", [*args, "--repeats", "1", "--out", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["mode"] for r in records] == ["cached", "beam4", "uncached"]
    assert all(r["tokens_per_sec"] > 0 and r["source_len"] == 128 for r in records)
