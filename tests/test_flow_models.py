"""Flow-matching transformers (SD3 / SD3.5 and Flux layouts): the engine equals the flow reference
on tiny random-weight models saved and loaded through their `from_pretrained` folders, for every
batch size, image order and policy; the flow schedule's algebra; and clear refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import errors_of

from fastgen import DiffusionClassifier
from fastgen.engine.config import ScoringConfig
from fastgen.engine.sampling import SamplePlan
from fastgen.models import ModelLoadError, load_adapter
from fastgen.models.flux import pack_latents, unpack_latents
from fastgen.models.schedules import FlowSchedule, flow_shift, logit_normal_density, logit_normal_quantile
from fastgen.testing import make_flux, make_sd3

FLOW_KINDS = ["sd3", "sd3-pixel", "flux"]
ANIMALS = ["cat", "dog", "bird", "fish", "car"]


def _classifier(folder, **options) -> DiffusionClassifier:
    settings = {"policy": "exhaustive", "policy_options": {"n_samples": 5}, "device": "cpu", "batch_size": 7}
    settings.update(options)
    return DiffusionClassifier.from_pretrained(folder, classes=settings.pop("classes", ANIMALS[:3]), **settings)


def _assert_same(results, reference):
    for got, want in zip(results, reference):
        np.testing.assert_array_equal(np.isnan(got.errors), np.isnan(want.errors))
        np.testing.assert_allclose(got.partial_errors, want.partial_errors, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(got.n_samples, want.n_samples)
        assert got.prediction == want.prediction and got.unet_evals == want.unet_evals


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_engine_matches_flow_reference_across_batch_sizes_and_orders(model_dirs, images, kind):
    clf = _classifier(model_dirs[kind])
    assert clf.adapter.schedule.kind == "flow"
    reference = [clf.classify_reference(image) for image in images[:3]]
    # the errors must differ between classes, or equality would prove little
    assert np.isfinite(errors_of(reference)).all() and errors_of(reference).std(axis=1).min() > 0
    for batch_size in (1, 7, 64):
        clf.batch_size = batch_size
        _assert_same(clf.classify(images[:3]), reference)
    clf.batch_size = 7
    _assert_same(clf.classify(images[:3][::-1])[::-1], reference)
    mixed = clf.classify([images[3], images[0], images[4], images[1], images[2]])
    _assert_same([mixed[1], mixed[3], mixed[4]], reference)


def _tree(tmp_path) -> str:
    nodes = [
        {"name": "pets", "prompt": "a photo of a pet", "children": ["cat", "dog"]},
        {"name": "outdoor", "prompt": "a photo of something outdoors", "children": ["bird", "fish"]},
    ]
    path = tmp_path / "tree.json"
    path.write_text(json.dumps({"nodes": nodes}))
    return str(path)


POLICIES = {
    "stages": {"n_samples": (2, 5, 8), "to_keep": (3, 2, 1)},
    "paired": {"alpha": 0.3, "min_samples": 3, "max_samples": 9, "check_every": 2},
    "paired-screened": {"alpha": 0.3, "min_samples": 4, "max_samples": 8, "screen_samples": 2, "screen_keep": 3},
    "tree": {"beam": 1, "node_samples": 3, "alpha": 0.4, "min_samples": 3, "max_samples": 7},
}


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_policy_decides_identically_in_engine_and_flow_reference(model_dirs, images, tmp_path, kind, policy):
    options = dict(POLICIES[policy])
    if policy == "tree":
        options["tree"] = _tree(tmp_path)
    name = "paired" if policy == "paired-screened" else policy
    clf = _classifier(model_dirs[kind], classes=ANIMALS, policy=name, policy_options=options, batch_size=6)
    reference = [clf.classify_reference(image) for image in images[:2]]
    assert any(np.isnan(r.errors).any() for r in reference)  # the policy did prune
    _assert_same(clf.classify(images[:2]), reference)


@pytest.mark.parametrize(
    "scoring",
    [
        {"flow_timesteps": "shifted", "flow_weighting": "epsilon"},
        {"flow_timesteps": "logit-normal", "flow_weighting": "sd3", "loss": "l1"},
        {"flow_timesteps": "uniform", "flow_weighting": "sd3", "timesteps": "random", "seed": 4},
        {"timestep_weights": (0.0, 1.0, 3.0, 1.0), "loss": "huber"},
    ],
    ids=["shifted-epsilon", "logit-normal-sd3-l1", "random-sd3", "band-weights-huber"],
)
def test_flow_scoring_choices_match_reference(model_dirs, images, scoring):
    clf = _classifier(model_dirs["sd3"], batch_size=4, **scoring)
    reference = [clf.classify_reference(image) for image in images[:2]]
    _assert_same(clf.classify(images[:2]), reference)
    recorded = clf.config.as_dict()
    assert recorded["flow_timesteps"] == scoring.get("flow_timesteps", "uniform")


def test_flow_defaults_are_recorded_and_the_choices_change_the_scores(model_dirs, images):
    plain = _classifier(model_dirs["sd3-pixel"])
    assert (plain.config.flow_timesteps, plain.config.flow_weighting) == ("uniform", "velocity")
    base = plain.classify(images[0])[0].errors
    for scoring in ({"flow_weighting": "epsilon"}, {"flow_timesteps": "logit-normal"}):
        other = _classifier(model_dirs["sd3-pixel"], **scoring).classify(images[0])[0].errors
        assert np.abs(other - base).max() > 1e-4


def test_flow_schedule_algebra():
    schedule = FlowSchedule(1000, shift=3.0)
    t = torch.tensor([0, 250, 999])
    alpha, sigma = schedule.noising(t)
    np.testing.assert_allclose(sigma.numpy(), [0.0005, 0.2505, 0.9995])
    np.testing.assert_allclose((alpha + sigma).numpy(), 1.0)
    # The epsilon-equivalent weight turns a velocity error into the noise error exactly.
    g = torch.Generator().manual_seed(0)
    x0, eps, v_hat = (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    s = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64).view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    eps_hat = x_t + (1 - s) * v_hat  # the noise the velocity implies
    v_error = ((v_hat - (eps - x0)) ** 2).flatten(1).mean(1)
    eps_error = ((eps_hat - eps) ** 2).flatten(1).mean(1)
    np.testing.assert_allclose((v_error * (1 - s.flatten()) ** 2).numpy(), eps_error.numpy(), rtol=1e-12)
    # The logit-normal quantile and density belong to one distribution.
    u = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    q = logit_normal_quantile(u)
    grid = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=torch.float64)
    cdf = torch.cumsum(logit_normal_density(grid), 0) * (grid[1] - grid[0])
    np.testing.assert_allclose(np.interp(q.numpy(), grid.numpy(), cdf.numpy()), u.numpy(), atol=2e-3)


def test_flow_timestep_densities_stay_nested_and_follow_their_density():
    schedule = FlowSchedule(1000, shift=3.0)
    for density in ("uniform", "shifted", "logit-normal"):
        plan = SamplePlan(schedule, ScoringConfig(flow_timesteps=density))
        first = plan.timesteps(256).clone()
        assert torch.equal(SamplePlan(schedule, ScoringConfig(flow_timesteps=density)).timesteps(32), first[:32])
        assert first.min() >= 0 and first.max() < 1000
        levels = schedule.sigmas(first)
        if density == "uniform":
            assert abs(float(levels.mean()) - 0.5) < 0.01
        elif density == "shifted":  # shift 3 puts most samples at high noise
            assert float((levels > 0.5).double().mean()) > 0.7
        else:  # logit-normal: symmetric about 1/2, few samples at the extremes
            assert abs(float(levels.mean()) - 0.5) < 0.01 and float((levels < 0.05).double().mean()) < 0.02


def test_dynamic_shift_follows_the_flux_pipeline():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096,
              "base_shift": 0.5, "max_shift": 1.15}  # fmt: skip
    for tokens in (256, 1024, 4096):
        assert flow_shift(config, tokens) == pytest.approx(math.exp(calculate_shift(tokens, 256, 4096, 0.5, 1.15)))
    assert flow_shift({"shift": 3.0}, 4096) == 3.0


def test_flux_packing_matches_the_pipeline_and_round_trips():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    assert torch.equal(load_adapter_ids(3 * 2, 4 * 2), ids)


def load_adapter_ids(height, width):
    from fastgen.models.flux import latent_image_ids

    return latent_image_ids(height, width)


def test_flux_denoiser_equals_the_transformer_called_as_the_pipeline_calls_it(model_dirs):
    """The packed-condition denoiser gives exactly what FluxPipeline's own call gives."""
    adapter = load_adapter(model_dirs["flux"])
    assert adapter.guidance == 3.5 and adapter.x0_shape == (4, 16, 16)
    from fastgen.inputs.classes import build_classes

    classes = build_classes(["cat", "dog"], templates=["a photo of a {}"])
    cond = adapter.encode_conditions(classes)
    sequence, pooled, text_ids = adapter.text_pipeline.encode_prompt(
        prompt=classes.flat_prompts, prompt_2=None, device="cpu", max_sequence_length=6
    )
    g = torch.Generator().manual_seed(2)
    x_t, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 700])
    from diffusers import FluxPipeline

    with torch.no_grad():
        got = adapter.denoiser(x_t, t, cond)
        tokens = adapter.denoiser.transformer(
            hidden_states=FluxPipeline._pack_latents(x_t, 2, 4, 16, 16),
            timestep=(t.float() + 0.5) / 1000,
            guidance=torch.full([2], 3.5),
            pooled_projections=pooled,
            encoder_hidden_states=sequence,
            txt_ids=text_ids,
            img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32),
            return_dict=False,
        )[0]
    want = FluxPipeline._unpack_latents(tokens, 32, 32, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_sd3_conditions_are_the_pipelines_own(model_dirs):
    adapter = load_adapter(model_dirs["sd3"])
    from fastgen.inputs.classes import build_classes

    classes = build_classes(["cat", "dog"], templates=["a photo of a {}"])
    cond = adapter.encode_conditions(classes)
    embeds, _, pooled, _ = adapter.text_pipeline.encode_prompt(
        classes.flat_prompts, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=6
    )
    assert embeds.shape == (2, 8 + 6, 48) and cond.shape == (2, adapter.condition_shape[0])
    torch.testing.assert_close(adapter.denoiser.unpack(cond)[0], embeds)
    torch.testing.assert_close(adapter.denoiser.unpack(cond)[1], pooled)
    assert not torch.equal(cond[0], cond[1])


# -- clear errors ---------------------------------------------------------------------------------


def test_an_epsilon_model_weighting_asked_of_a_flow_model_is_refused(model_dirs):
    with pytest.raises(ValueError, match="weighting=7.0 .*flow_weighting"):
        _classifier(model_dirs["sd3"], weighting=7.0)


def test_flow_settings_asked_of_a_diffusion_model_are_refused(model_dirs):
    with pytest.raises(ValueError, match="flow_weighting='sd3' applies to flow-matching models"):
        _classifier(model_dirs["pixel-text"], flow_weighting="sd3")
    with pytest.raises(ValueError, match="flow_timesteps must be one of"):
        ScoringConfig(flow_timesteps="cosine")


def test_a_missing_text_encoder_is_named(tmp_path):
    import shutil

    folder = make_sd3(tmp_path / "sd3", with_t5=False, with_vae=False)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelLoadError, match="missing the component 'text_encoder_2/'"):
        load_adapter(folder)
    flux = make_flux(tmp_path / "flux", guidance_embeds=False)
    index = json.loads((flux / "model_index.json").read_text())
    index["text_encoder_2"] = [None, None]  # Flux has no T5-free form
    (flux / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="missing the component 'text_encoder_2/'.*Flux"):
        load_adapter(flux)


def test_guidance_asked_of_a_checkpoint_without_it_is_refused(tmp_path):
    folder = make_flux(tmp_path / "schnell-like", guidance_embeds=False)
    assert load_adapter(folder).guidance is None
    with pytest.raises(ValueError, match="guidance=4.0 was asked of .*no guidance input"):
        load_adapter(folder, conditioning={"guidance": 4.0})


def test_a_layout_that_is_neither_sd_nor_sd3_nor_flux_is_refused(tmp_path, model_dirs):
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(model_dirs["sd3-pixel"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "HunyuanDiT2DModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="HunyuanDiT2DModel; fastgen serves .*SD3 and Flux"):
        load_adapter(folder)
    index.pop("transformer")
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="neither a 'unet' nor a 'transformer'"):
        load_adapter(folder)


def test_conditioning_settings_are_refused_where_they_do_not_apply(model_dirs):
    with pytest.raises(ValueError, match="apply to SD3 and Flux models"):
        load_adapter(model_dirs["pixel-text"], conditioning={"guidance": 2.0})
    with pytest.raises(ValueError, match="do not apply to SD3 models"):
        load_adapter(model_dirs["sd3"], conditioning={"guidance": 2.0})


# -- command line ---------------------------------------------------------------------------------


def test_classify_command_takes_flow_settings_and_records_them(model_dirs, tmp_path, capsys):
    from helpers import file_lines
    from PIL import Image

    from fastgen.commands.main import main

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "results.jsonl"
    argv = [
        "classify", str(folder), "--model", str(model_dirs["flux"]), "--classes", "cat,dog", "--out", str(out),
        "--policy", "exhaustive", "--n-samples", "3", "--flow-timesteps", "shifted", "--flow-weighting", "epsilon",
        "--conditioning", "guidance=2.5", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    header, records = file_lines(out)
    settings = header["settings"]
    assert (settings["flow_timesteps"], settings["flow_weighting"]) == ("shifted", "epsilon")
    assert settings["conditioning"] == {"max_sequence_length": 6, "resolution": [32, 32], "guidance": 2.5}
    assert len(records) == 2 and all(r["unet_evals"] == 6 for r in records)
    # Another guidance scores differently, so a resume with it is another job: refused.
    assert main([*argv[:-5], "--conditioning", "guidance=4", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert 'conditioning: {"max_sequence_length": 6, "resolution": [32, 32], "guidance": 2.5} in the file' in err


def test_flow_options_on_a_diffusion_model_are_a_one_line_error(tmp_path, capsys):
    from PIL import Image

    from fastgen.commands.main import main

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "digit.png")
    assert main(["classify", str(tmp_path), "--flow-weighting", "sd3", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "flow_weighting='sd3' applies to flow-matching models" in err and len(err.strip().splitlines()) == 1
