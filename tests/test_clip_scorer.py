"""clip-region scorer on a tiny random open_clip model saved as a local folder; no download."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from schemas.config import SelectionConfig
from schemas.priors import AnomalyPrior
from tests.tiny_models import save_clip_folder, tiny_clip
from uniadc.selection_clip import ALPHA_MEAN, ALPHA_STD, ClipRegionScorer, WeightsError, region_inputs
from uniadc.synthesis.base import CandidateScorer, ScoreRequest

RED, BLUE = np.array([220, 30, 30]), np.array([30, 30, 220])
RED_P = AnomalyPrior(name="red", descriptions=("a red patch", "red paint"))
BLUE_P = AnomalyPrior(name="blue", descriptions=("a blue patch",))
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_clip_folder(tmp_path_factory.mktemp("clip"), tiny_clip(0))


def _cfg(**kw) -> SelectionConfig:
    return SelectionConfig(**{"scorer": "clip-region", "device": "cpu", **kw})


def _scene(rng: np.random.Generator, inside: np.ndarray, outside: np.ndarray, size: int = 32):
    """Gray noise with a square of colour ``inside`` under the mask and one of ``outside`` elsewhere."""
    img = rng.normal(128, 15, (size, size, 3)).clip(0, 255)
    mask = np.zeros((size, size), bool)
    y, x = rng.integers(0, 6, 2)
    img[y : y + 10, x : x + 10], mask[y : y + 10, x : x + 10] = inside, True
    img[y + 16 : y + 26, x + 16 : x + 26] = outside
    return img.astype(np.uint8), mask


def _pairs(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    good = [_scene(rng, RED, BLUE) for _ in range(n)]
    bad = [_scene(rng, BLUE, RED) for _ in range(n)]
    images = np.stack([g[0] for g in good] + [b[0] for b in bad])
    masks = np.stack([g[1] for g in good] + [b[1] for b in bad])
    return images, masks


class MeanColourEncoder(nn.Module):
    """A constructed image tower: per-patch ReLU(R - B) and ReLU(B - R), averaged, projected on two texts."""

    def __init__(self, patch: int = 8, size: int = 32, gate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, patch, patch, bias=True)
        w = torch.zeros(2, 3, patch, patch)
        w[0, 0], w[0, 2], w[1, 2], w[1, 0] = 1.0, -1.0, 1.0, -1.0
        self.conv1.weight.data = w / patch**2
        self.conv1.bias.data.fill_(gate)
        self.proj = nn.Parameter(torch.zeros(2, 32), requires_grad=False)
        self.image_size = size
        self.preprocess_cfg = {"size": size, "mean": OPENAI_MEAN, "std": OPENAI_STD}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv1(x)).mean(dim=(2, 3)) @ self.proj


def _constructed_scorer(folder: Path, mode: str) -> ClipRegionScorer:
    import open_clip

    model = tiny_clip(0)
    # alpha mode: a patch's ReLU inputs get k * mean(alpha) + gate, which is < -2.6 (the largest |R - B|)
    # outside the mask and >= 0 for patches at least a quarter inside it
    k, inside = 5.0, (1 - ALPHA_MEAN) / ALPHA_STD
    model.visual = MeanColourEncoder(gate=k * inside / 2 if mode == "alpha" else 0.0)
    scorer = ClipRegionScorer.from_model(
        _cfg(), model, open_clip.get_tokenizer(f"local-dir:{folder}"), mode=mode
    )
    with torch.no_grad():
        model.visual.proj.copy_(torch.stack([scorer.text_features(RED_P), scorer.text_features(BLUE_P)]))
        if mode == "alpha":
            model.visual.conv1_alpha.weight.fill_(k / 8**2)
    return scorer


@pytest.mark.parametrize("mode", ["dim", "alpha"])
def test_matching_region_ranks_above_mismatching(folder, mode):
    scorer = _constructed_scorer(folder, mode)
    images, masks = _pairs()
    scores = scorer.score(
        ScoreRequest(candidates=images, masks=masks, references=images, prior=RED_P, other_priors=(BLUE_P,))
    )
    assert scores.shape == (16,) and scores.dtype == np.float64
    assert scores[:8].min() > scores[8:].max()  # region red, decoy blue beats region blue, decoy red
    flipped = scorer.score(
        ScoreRequest(candidates=images, masks=masks, references=images, prior=BLUE_P, other_priors=(RED_P,))
    )
    assert np.allclose(scores + flipped, 1.0)  # two categories: the softmax entries sum to one
    plain = scorer.score(
        ScoreRequest(
            candidates=images,
            masks=np.ones_like(masks),
            references=images,
            prior=RED_P,
            other_priors=(BLUE_P,),
        )
    )
    assert np.ptp(plain) < np.ptp(scores)  # without the region both colours are seen alike


def test_scorer_from_a_local_folder(folder):
    scorer = ClipRegionScorer(_cfg(clip_model=f"local-dir:{folder}", region_prompt="blur"))
    assert isinstance(scorer, CandidateScorer) and scorer.name == "clip-region" and scorer.mode == "blur"
    images, masks = _pairs(4)
    req = ScoreRequest(candidates=images, masks=masks, references=images, prior=RED_P, other_priors=(BLUE_P,))
    scores = scorer.score(req)
    assert scores.shape == (8,) and np.all((scores > 0) & (scores < 1))
    assert np.array_equal(scores, scorer.score(req))
    single = scorer.score(ScoreRequest(candidates=images, masks=masks, references=images, prior=RED_P))
    cos = (scorer.image_features(images, masks) @ scorer.text_features(RED_P)).double().numpy()
    assert np.allclose(single, cos) and np.ptp(single) > 0  # one category: raw cosine, not a constant 1


def test_alpha_clip_visual_checkpoint(folder, tmp_path):
    reference = tiny_clip(0)
    visual = {k: v.clone() for k, v in reference.visual.state_dict().items()}
    renamed = {
        f"{k}".replace("attn.in_proj_weight", "attn.in_proj.weight").replace(
            "attn.in_proj_bias", "attn.in_proj.bias"
        ): v
        for k, v in visual.items()
    }
    renamed["conv1_alpha.weight"] = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.1
    torch.save(renamed, tmp_path / "alpha_visual.pth")
    scorer = ClipRegionScorer(
        _cfg(clip_model=f"local-dir:{folder}", alpha_clip_weights=str(tmp_path / "alpha_visual.pth"))
    )
    assert scorer.mode == "alpha"
    assert torch.equal(scorer.model.visual.conv1_alpha.weight, renamed["conv1_alpha.weight"])
    assert torch.equal(
        scorer.model.visual.transformer.resblocks[0].attn.in_proj_weight,
        visual["transformer.resblocks.0.attn.in_proj_weight"],
    )
    images, masks = _pairs(2)
    a = scorer.image_features(images[:1], masks[:1])
    b = scorer.image_features(images[:1], ~masks[:1])
    assert not torch.allclose(a, b)  # the mask reaches the image tower through the alpha channel
    del renamed["ln_post.weight"]
    torch.save(renamed, tmp_path / "broken.pth")
    with pytest.raises(
        WeightsError, match="broken.pth: state dict does not match.*1 missing .*ln_post.weight"
    ):
        ClipRegionScorer(
            _cfg(clip_model=f"local-dir:{folder}", alpha_clip_weights=str(tmp_path / "broken.pth"))
        )


def test_region_inputs():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 8:20, 8:20] = 1
    inside = m.bool().expand_as(x)
    for mode in ("blur", "dim"):
        y, alpha = region_inputs(x, m, mode)
        assert (
            alpha is None and torch.equal(y[inside], x[inside]) and not torch.allclose(y[~inside], x[~inside])
        )
    blurred, _ = region_inputs(x, m, "blur")
    assert blurred[~inside].std() < 0.5 * x[~inside].std()
    y, alpha = region_inputs(x, m, "alpha")
    assert torch.equal(y, x) and torch.allclose(alpha[m.bool()], torch.tensor((1 - ALPHA_MEAN) / ALPHA_STD))
    with pytest.raises(ValueError, match="mode must be"):
        region_inputs(x, m, "red-circle")


def test_weights_errors(tmp_path, folder):
    with pytest.raises(WeightsError, match="selection.clip_weights is not set; expected an open_clip"):
        ClipRegionScorer(_cfg(clip_model="ViT-B-16"))
    with pytest.raises(WeightsError, match=f"clip_weights='{tmp_path}/x.pt': no such file"):
        ClipRegionScorer(_cfg(clip_model="ViT-B-16", clip_weights=str(tmp_path / "x.pt")))
    with pytest.raises(WeightsError, match="clip_model='.*nope': no such folder"):
        ClipRegionScorer(_cfg(clip_model=f"local-dir:{tmp_path / 'nope'}"))
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "open_clip_config.json").write_text(
        (folder / "open_clip_config.json").read_text()
    )
    with pytest.raises(WeightsError, match="no weights file"):
        ClipRegionScorer(_cfg(clip_model=f"local-dir:{tmp_path / 'cfg_only'}"))
    with pytest.raises(WeightsError, match="alpha_clip_weights is not set"):
        ClipRegionScorer(_cfg(clip_model=f"local-dir:{folder}", region_prompt="alpha"))


@pytest.mark.gpu
@pytest.mark.weights
def test_gpu_clip_region_real_weights():
    weights = os.environ.get("UNIADC_CLIP_WEIGHTS")
    if not weights or not Path(weights).is_file():
        pytest.skip("set UNIADC_CLIP_WEIGHTS (and UNIADC_CLIP_MODEL, UNIADC_ALPHA_CLIP) to local files")
    cfg = SelectionConfig(
        scorer="clip-region",
        clip_model=os.environ.get("UNIADC_CLIP_MODEL", "ViT-L-14-336-quickgelu"),
        clip_weights=weights,
        alpha_clip_weights=os.environ.get("UNIADC_ALPHA_CLIP"),
    )
    scorer = ClipRegionScorer(cfg)
    images, masks = _pairs(4)
    scores = scorer.score(
        ScoreRequest(candidates=images, masks=masks, references=images, prior=RED_P, other_priors=(BLUE_P,))
    )
    assert scores.shape == (8,) and np.isfinite(scores).all()
