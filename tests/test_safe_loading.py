"""Safe loading: pickle checkpoints are refused unless allowed, and `local_files_only` never
touches the network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from fastgen.commands.main import main as cli_main
from fastgen.models import ModelLoadError, load_adapter

# component -> (safetensors file, the pickle file the same library would read instead)
WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


@pytest.fixture(params=sorted(WEIGHT_FILES))
def pickle_model(request, model_dirs, tmp_path):
    """The tiny pixel-text model with one component's weights as a pickle checkpoint only."""
    component = request.param
    folder = shutil.copytree(model_dirs["pixel-text"], tmp_path / "pickled")
    safe, unsafe = WEIGHT_FILES[component]
    torch.save(load_file(folder / component / safe), folder / component / unsafe)
    (folder / component / safe).unlink()
    return folder, component


def _module(adapter, component):
    return adapter.denoiser if component == "unet" else adapter.text_encoder


def test_pickle_checkpoint_is_refused_with_a_clear_message(pickle_model):
    folder, component = pickle_model
    with pytest.raises(ModelLoadError) as caught:
        load_adapter(folder, local_files_only=True)
    message = str(caught.value)
    assert f"component '{component}'" in message
    assert "safetensors only" in message and "allow_pickle=True" in message


def test_pickle_checkpoint_loads_when_allowed(pickle_model, model_dirs):
    folder, component = pickle_model
    pickled = _module(load_adapter(folder, local_files_only=True, allow_pickle=True), component)
    original = _module(load_adapter(model_dirs["pixel-text"], local_files_only=True), component)
    want = original.state_dict()
    got = pickled.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_command_line_refuses_pickle_and_names_the_flag(pickle_model, images, tmp_path, capsys):
    folder, _ = pickle_model
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray((images[0] * 255).byte().permute(1, 2, 0).numpy()).save(image)
    code = cli_main(["classify", str(image), "--model", str(folder), "--classes", "cat,dog", "--device", "cpu"])
    assert code == 2
    assert "--allow-pickle" in capsys.readouterr().err


# Runs in a fresh interpreter with every offline switch off and an empty hub cache, so that only
# `local_files_only` stands between the loader and the network. An audit hook sees every DNS
# lookup and connection, whichever library makes it, and refuses it.
_NETWORK_PROBE = textwrap.dedent(
    """
    import json, os, socket, sys
    attempts = []
    def audit(event, args):
        if event in ("socket.getaddrinfo", "socket.connect"):
            attempts.append(event)
            raise OSError("network refused by the test")
    sys.addaudithook(audit)
    from fastgen.models import ModelLoadError, load_adapter
    outcome = {}
    try:
        load_adapter("fastgen-tests/not-a-real-model", local_files_only=True)
    except ModelLoadError as error:
        outcome["hub_id_error"] = str(error)
    outcome["hub_id_attempts"] = len(attempts)
    load_adapter(sys.argv[1], local_files_only=True)
    outcome["folder_attempts"] = len(attempts)
    try:
        socket.getaddrinfo("huggingface.co", 443)  # the probe itself must see this one
    except OSError:
        pass
    outcome["control_attempts"] = len(attempts)
    print(json.dumps(outcome))
    """
)


def test_local_files_only_never_touches_the_network(model_dirs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", _NETWORK_PROBE, str(model_dirs["pixel-text"])],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert "not-a-real-model" in outcome["hub_id_error"]
    assert outcome["hub_id_attempts"] == 0 and outcome["folder_attempts"] == 0
    assert outcome["control_attempts"] == 1
