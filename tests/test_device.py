"""Device strings: one parser (dlnn_core/device.py) behind TrainConfig.device, `dlnn work/run --device`,
the GPU slot claim and the device a run trains on; each refuses a bad string naming its field and the
allowed forms."""

from __future__ import annotations

import pytest

from dlnn_core.config import TrainConfig
from dlnn_core.device import Device, parse_device
from dlnn_core.errors import ConfigError
from dlnn_studies.cli.main import main


@pytest.mark.parametrize("text, device", [
    ("auto", Device("auto")), ("cpu", Device("cpu")), ("cuda", Device("cuda")), ("cuda:0", Device("cuda", 0)),
    ("cuda:12", Device("cuda", 12)),
])
def test_the_allowed_forms(text, device):
    assert parse_device(text) == device and str(device) == text


@pytest.mark.parametrize("bad", ["gpu", "CPU", "cuda:", "cuda:-1", "cuda:x", "cuda:²", "cuda:1 ", "mps", "", None, 0])
def test_anything_else_names_the_field_and_the_allowed_forms(bad):
    with pytest.raises(ConfigError, match=r"^--device: .*expected 'auto', 'cpu', 'cuda' or 'cuda:K'$"):
        parse_device(bad, "--device")
    with pytest.raises(ConfigError, match=r"^device: .*expected 'auto', 'cpu', 'cuda' or 'cuda:K'$"):
        TrainConfig(device=bad)


def test_the_cli_refuses_a_bad_device_before_it_starts(capsys):
    assert main(["work", "some-study", "--device", "gpu0"]) == 1
    assert "argument --device: 'gpu0': expected 'auto', 'cpu', 'cuda' or 'cuda:K'" in capsys.readouterr().err


def test_a_run_trains_on_the_parsed_device():
    import torch

    from dlnn_core.train import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="^device: 'cuda0'"):
        resolve_device("cuda0")  # torch.device would read it; the config never would
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            resolve_device("cuda:0")
