"""The benchmark runner produces its table, JSON and chart (timings themselves are not asserted)."""

import json

from benchmarks.__main__ import main


def test_quick_run_writes_json_and_chart(tmp_path, capsys):
    assert main(["--quick", "--device", "cpu", "--only", "focal_loss,nms,postprocess", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cpu-focal_loss-nms-postprocess-quick.json").read_text())
    assert (tmp_path / "cpu-focal_loss-nms-postprocess-quick.png").stat().st_size > 0
    assert result["meta"]["device"] and result["meta"]["torch"]
    rows = result["rows"]
    ops = {(r["op"], r["impl"], r["pass"]) for r in rows}
    assert ("sigmoid_focal_loss", "focalops", "fwd+bwd") in ops
    assert ("sigmoid_focal_loss", "reference", "fwd+bwd") in ops
    assert ("postprocess", "focalops", "fwd") in ops
    assert all(r["ms"] > 0 and r["dtype"] and r["size"] and r["device"] == "cpu" for r in rows)
    assert any("speedup" in r for r in rows)
    assert "sigmoid_focal_loss" in capsys.readouterr().out
