"""The metrics order things rightly, on synthetic features and on real MNIST."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mnistgan.metrics import METRICS, compute, evaluate, format_table, reference, scores


def gaussians(n=4000, d=8, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


def test_fid_of_a_set_with_itself_is_zero_and_of_shifted_gaussians_is_the_shift():
    a = gaussians()
    assert scores.fid(a, a) == pytest.approx(0, abs=1e-6)
    b = gaussians(seed=1, shift=torch.tensor([2.0] + [0.0] * 7))
    assert scores.fid(a, b) == pytest.approx(4.0, rel=0.1)


def test_kid_is_about_zero_for_one_distribution_and_grows_with_distance():
    a, b, c = gaussians(seed=0), gaussians(seed=1), gaussians(seed=2, shift=1.0)
    same, _ = scores.kid(a, b, subsets=10, subset_size=500)
    far, _ = scores.kid(a, c, subsets=10, subset_size=500)
    assert abs(same) < 0.02 < far


def test_precision_recall_of_one_repeated_point():
    real = gaussians(n=1000)
    p, r = scores.precision_recall(real, gaussians(n=1000, seed=3))
    assert p > 0.8 and r > 0.8
    p, r = scores.precision_recall(real, real[:1].repeat(1000, 1) + 1e-4 * gaussians(n=1000))
    assert p == 1.0 and r < 0.05


def test_knn_radii_are_the_kth_neighbour_and_a_kept_reference_radius_changes_nothing():
    real, fake = gaussians(n=3000), gaussians(n=500, seed=3, shift=0.5)
    by_sorting = torch.cdist(real, real).sort(dim=1).values[:, scores.PR_K]  # [:, 0]: the point itself
    radii = scores.knn_radius(real, chunk=1024)  # chunks that do not divide the set
    assert torch.equal(radii, by_sorting)
    assert scores.precision_recall(real, fake, real_radii=radii) == scores.precision_recall(real, fake)
    assert scores.recall(real, fake) == scores.precision_recall(real, fake)[1]


def test_classifier_score_extremes():
    confident = F.one_hot(torch.arange(1000) % 10, 10).float()
    assert scores.classifier_score(confident)[0] == pytest.approx(10, rel=1e-3)
    assert scores.classifier_score(F.one_hot(torch.zeros(1000, dtype=torch.long), 10).float())[0] == (
        pytest.approx(1))


@pytest.fixture(scope="module")
def ref(mnist_dir):
    return reference()


@pytest.fixture(scope="module")
def real(ref):
    return ref.heldout[:1000]


def blur(u8):
    x = u8.float().unsqueeze(1)
    return F.avg_pool2d(x, 3, stride=1, padding=1).squeeze(1).round().to(torch.uint8)


def test_fid_orders_real_blurred_noise(ref, real):
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    fid = [compute(x, ref, ["fid"])["fid"] for x in (real, blur(real), noise)]
    assert fid[0] < fid[1] < fid[2], fid


def test_one_digit_is_flagged_as_mode_collapse(ref, mnist_dir):
    from mnistgan.data import load_split

    x, y = load_split("mnist", "test")
    ones = x[y == 1][:500]
    out = compute(ones, ref, ["classes", "classifier_score"])
    assert out["missing_digits"] >= 8 and out["class_entropy"] < 0.1  # one misread 1 may show
    assert out["classifier_score"] < 1.2


def test_copies_of_training_images_are_flagged_as_memorised(ref, real, mnist_dir):
    from mnistgan.data import load_split

    train_x, _ = load_split("mnist", "train")
    copies = train_x[:500]  # the bank is the first five sixths of the training set
    assert compute(copies, ref, ["memorisation"])["memorised"] > 0.9
    assert compute(real, ref, ["memorisation"])["memorised"] < 0.05


def test_every_registered_metric_runs_and_the_table_has_the_floor(real):
    result = evaluate(real[:500])
    assert set(result["generated"]) >= {"fid", "kid", "precision", "recall", "classifier_score",
                                         "class_entropy", "memorised"}
    assert len(METRICS) == 7
    assert reference() is reference((), None)  # one cache entry, however it is asked for
    table = format_table(result)
    assert "real floor (500)" in table and "FID" in table
    assert sum(result["histogram"]) == 500


def test_per_digit_scores_catch_a_collapse_inside_one_digit(mnist_dir):
    """Real test digits, except that every 3 is one and the same 3: overall the set looks
    nearly right, per digit the 3s are far off and named the worst."""
    from mnistgan.data import load_split

    x, y = load_split("mnist", "test")
    x, y = x[:2000].clone(), y[:2000]
    x[y == 3] = x[y == 3][0]
    result = evaluate(x, labels=y)  # as a conditional model asked for these digits
    gen, real = result["generated"], result["real"]
    assert int(gen["worst_digit"]) == 3
    others = [gen[f"fid_{d}"] for d in range(10) if d != 3]
    assert gen["fid_3"] > 10 * max(others)
    assert gen["recall_3"] < 0.1 < min(gen[f"recall_{d}"] for d in range(10) if d != 3)
    assert real["fid_3"] < 3 * max(real[f"fid_{d}"] for d in range(10))  # the floor is even
    assert "worst digit: 3" in format_table(result)


def test_digit_subset_reference(mnist_dir):
    five = reference((5,))
    assert five.digits == (5,)
    from mnistgan.data import load_split

    x, y = load_split("mnist", "test")
    out = compute(x[y == 5][:300], five, ["classes", "fid"])
    assert out["missing_digits"] == 0 and out["class_entropy"] == pytest.approx(0, abs=1e-9)


def test_evaluate_cli_on_npy_writes_json(tmp_path, ref, real):
    npy = tmp_path / "x.npy"
    np.save(npy, real[:300].numpy())
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "mnistgan", "evaluate", npy, "--json", out],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "real floor (300)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["generated"]["fid"] >= 0 and data["samples"] == 300
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 28, 27), dtype=np.uint8))
    proc = subprocess.run([sys.executable, "-m", "mnistgan", "evaluate", bad],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "(N, 28, 28) uint8" in proc.stderr


def test_too_few_images_is_a_clear_error(tmp_path, real):
    npy = tmp_path / "few.npy"
    np.save(npy, real[:3].numpy())
    proc = subprocess.run([sys.executable, "-m", "mnistgan", "evaluate", npy],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "too few to measure" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_table_names_rare_and_missing_digits():
    result = {"samples": 100, "real_samples": 100, "digits": list(range(10)),
              "histogram": [30, 30, 30, 1, 0, 1, 2, 2, 2, 2],
              "generated": {k: 0.0 for k in ("fid", "kid", "kid_std", "classifier_score",
                                              "classifier_score_std", "precision", "recall",
                                              "class_entropy", "missing_digits", "rare_digits",
                                              "memorised")}}
    result["real"] = result["generated"]
    assert "mode dropping: missing 4; rare 3, 5" in format_table(result)
