"""``unisub lora ...``: compress, inspect, export, absorb, merge from the command line on the
MiniLM zoo, and its errors (exit code 2, a message naming the problem)."""
import json

import torch

import lora_zoo
from lora_zoo import single_thread  # noqa: F401  (autouse)
from unisub.cli import main
from unisub.lora import LoraZoo


def test_cli_compress_export_absorb_merge(tmp_path, capsys):
    lora_zoo.require()
    root = lora_zoo.zoo_folder()
    zoo_file = tmp_path / "zoo.safetensors"
    args = ["lora", "compress", *map(str, lora_zoo.zoo_paths()), "--out", str(zoo_file), "--energy", "0.8",
            "--keep-state", "--json", str(tmp_path / "report.json"), "--quiet"]
    assert main(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [e["name"] for e in report["errors"]] == lora_zoo.ZOO and report["storage"]["ratio"] > 0
    assert main(["lora", "inspect", str(zoo_file)]) == 0
    out = capsys.readouterr().out
    assert "b_r8_rslora_f16" in out and "ratio" in out
    assert main(["lora", "export", str(zoo_file), "c_r2_patterns_bf16", "--out", str(tmp_path / "c"),
                 "--dtype", "float32"]) == 0
    assert (tmp_path / "c" / "adapter_model.safetensors").exists()
    assert main(["lora", "export", str(zoo_file), "1", "--out", str(tmp_path / "one")]) == 0
    cfg = json.loads((tmp_path / "one" / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"]
    assert main(["lora", "absorb", str(zoo_file), str(root / lora_zoo.HELD_OUT), "--update-bases",
                 "--out", str(tmp_path / "zoo2.safetensors")]) == 0
    assert LoraZoo.load(tmp_path / "zoo2.safetensors").names[-1] == lora_zoo.HELD_OUT
    assert main(["lora", "merge", *map(str, lora_zoo.zoo_paths()[:2]), "--method", "ties", "--out",
                 str(tmp_path / "m"), "--modules", "*.0.attention.self.query"]) == 0
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["encoder.layer.0.attention.self.query"]
    capsys.readouterr()
    # errors: a name the zoo does not have, a file that is not a zoo, an option clash
    assert main(["lora", "export", str(zoo_file), "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no adapter named 'nope'" in capsys.readouterr().err
    not_zoo = tmp_path / "plain.safetensors"
    from unisub.io import save_file

    save_file({"x": torch.zeros(2)}, not_zoo)
    assert main(["lora", "inspect", str(not_zoo)]) == 2
    assert "not a unisub LoRA zoo" in capsys.readouterr().err
    assert main(["lora", "compress", str(root / "a_r4"), "--out", str(tmp_path / "z"), "--lossless",
                 "--rank", "2"]) == 2
