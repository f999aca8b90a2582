"""`smoothgen center --model mtcnn|opencv-haar|rapidocr`: real pretrained models by name, with their data sets,
metrics, readable certificates and PNG (smoothgen.pretrained, smoothgen.center_report). Small n and m and a
large Delta keep these runs to seconds; the full-size runs are benchmarks/center_pretrained.py's."""
import json

import numpy as np
import pytest
from PIL import Image

from smoothgen.cli import main

# n = 100 passes the center check only with a large Delta and alpha1 (Delta1 = sqrt(ln(2/alpha1) / 2n) <= Delta).
SMALL = ["--n", "100", "--m", "200", "--delta", "0.2", "--alpha1", "0.05", "--alpha2", "0.05", "--no-progress"]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mtcnn_on_faces_prints_the_iou_kept_and_draws_the_boxes(tmp_path, capsys):
    out, png = tmp_path / "faces.jsonl", tmp_path / "faces.png"
    code = main(["center", "--model", "mtcnn", "--num", "2", "--eps-in", "0.01", "--h", "0.5", "--batch-size", "100",
                 "--out", str(out), "--png", str(png), *SMALL])
    assert code == 0
    printed = capsys.readouterr().out
    records = _records(out)
    assert len(records) == 2 and {r["metric"] for r in records} == {"jaccard"}
    for r in records:
        assert r["clean_box"] is not None and len(r["clean_box"]) == 4
        if not r["abstained"]:
            assert r["iou_guaranteed"] == pytest.approx(max(0.0, 1 - r["eps_out"]))
            assert f"IoU >= {r['iou_guaranteed']:.2f} with the smoothed box guaranteed" in printed
    assert "median guaranteed IoU" in printed or all(r["abstained"] for r in records)
    with Image.open(png) as image:
        assert image.size[0] > 100 and image.size[1] > 100
    # An existing PNG is replaced only with --overwrite (or --resume), like --out and --tsv, before any work.
    code = main(["center", "--model", "mtcnn", "--num", "2", "--out", str(tmp_path / "other.jsonl"), "--png", str(png), *SMALL])
    assert code == 2 and "--png" in capsys.readouterr().err
    assert not (tmp_path / "other.jsonl").exists()


def test_rapidocr_on_text_lines_prints_the_characters_that_may_change(tmp_path, capsys):
    out, png = tmp_path / "text.jsonl", tmp_path / "text.png"
    code = main(["center", "--model", "rapidocr", "--num", "1", "--eps-in", "0.01", "--h", "0.5", "--batch-size", "100",
                 "--out", str(out), "--png", str(png), *SMALL])
    assert code == 0
    printed = capsys.readouterr().out
    (record,) = _records(out)
    assert isinstance(record["clean_text"], str) and len(record["clean_text"]) > 5
    if not record["abstained"]:
        assert record["max_changed_characters"] == int(record["eps_out"])  # Levenshtein R̂ is an integer
        assert record["changed_share"] == pytest.approx(record["max_changed_characters"] / len(record["clean_text"]))
        assert "characters of the smoothed reading change" in printed
    with Image.open(png) as image:
        assert image.size[0] > 400


@pytest.mark.parametrize("argv, message", [
    (["--png", "x.png"], "--png draws boxes or strings"),
    (["--model", "mtcnn", "--png", "x.txt"], "--png must name a .png file"),
    (["--model", "mtcnn", "--backend", "onnxruntime"], "runs as it ships"),
    (["--model", "opencv-haar", "--device", "cuda"], "runs on the CPU"),
    (["--model", "mtcnn", "--metric", "no-such-metric"], "metric"),
])
def test_bad_pretrained_options_are_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["center", "--num", "1", "--out", str(tmp_path / "r.jsonl"), *argv, *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.jsonl").exists()


def test_named_data_sets():
    from smoothgen.pretrained import load_dataset

    faces, strings = load_dataset("faces")
    assert faces.shape == (100, 1, 100, 100) and faces.dtype == np.float32 and strings is None
    assert 0.0 <= faces.min() and faces.max() <= 1.0
    lines, texts = load_dataset("text-lines")
    assert lines.ndim == 4 and lines.shape[1:3] == (3, 48) and len(texts) == len(lines) >= 50
