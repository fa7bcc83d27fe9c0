"""`mnistgan serve`: the API's answers and refusals, and the page driven in a real browser."""

import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgan import load_config, load_generator, train
from mnistgan.cli import main
from mnistgan.config import NoiseConfig
from mnistgan.noise import interpolate, sample_noise

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mnistgan.serve import MAX_COUNT, create_app  # noqa: E402

TINY = ["train.batch_size=8", "train.steps=2", "train.log_every=1", "train.sample_every=1000",
        "train.grid_size=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {preset: train(load_config(preset, TINY), out=root / preset, progress=False).run_dir
            for preset in ("best", "seed-002")}


@pytest.fixture(scope="module")
def client(runs) -> TestClient:
    return TestClient(create_app(runs["best"]))


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_info_describes_the_model(client):
    info = client.get("/api/info").json()
    assert info["preset"] == "best" and info["conditional"] is True
    assert info["classes"] == list(range(10)) and info["noise"] == "normal"
    assert info["noises"] == ["normal", "uniform", "semicircle"] and info["max_count"] == MAX_COUNT


def test_grid_is_the_generators_own_samples(client, runs):
    grid = png(client.get("/api/grid.png", params={"n": 4, "seed": 3, "digit": 7, "scale": 1}))
    assert grid.shape == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
    expected = load_generator(runs["best"]).sample(4, seed=3, digit=7)
    assert np.array_equal(grid[2:30, 2:30], expected[0])
    assert np.array_equal(grid[32:60, 32:60], expected[3])
    again = png(client.get("/api/grid.png", params={"n": 4, "seed": 3, "digit": 7, "scale": 1}))
    assert np.array_equal(grid, again)
    for other in ({"seed": 4, "digit": 7}, {"seed": 3, "digit": 2},
                  {"seed": 3, "digit": 7, "noise": "uniform"}):
        changed = client.get("/api/grid.png", params={"n": 4, "scale": 1, **other})
        assert not np.array_equal(grid, png(changed))
    assert png(client.get("/api/grid.png", params={"n": 4, "scale": 3})).shape == (3 * 62, 3 * 62)


def test_grid_by_class_has_one_row_per_digit(client, runs):
    grid = png(client.get("/api/grid.png", params={"n": 3, "seed": 2, "by_class": "true", "scale": 1}))
    assert grid.shape == (10 * 28 + 11 * 2, 3 * 28 + 4 * 2)
    sevens = load_generator(runs["best"]).sample(3, seed=2, digit=7)
    assert np.array_equal(grid[2 + 7 * 30:30 + 7 * 30, 32:60], sevens[1])
    for query, words in [({"n": 26}, "n=26 with by_class=true makes 260 images: ask for at most 25"),
                         ({"digit": 4}, "by_class=true shows every digit: leave out digit")]:
        response = client.get("/api/grid.png", params={"by_class": "true", **query})
        assert response.status_code == 400 and response.json()["error"].startswith(words)


def test_samples_as_json(client):
    body = client.get("/api/samples", params={"n": 3, "seed": 1, "digit": 5}).json()
    images = np.array(body["images"])
    assert images.shape == (3, 28, 28) and images.min() >= 0 and images.max() <= 255
    assert body["labels"] == [5, 5, 5] and body["noise"] == "normal" and body["seed"] == 1
    mixed = client.get("/api/samples", params={"n": 200, "seed": 2}).json()
    assert set(mixed["labels"]) == set(range(10))  # drawn at random, as `mnistgan sample` does
    assert mixed == client.get("/api/samples", params={"n": 200, "seed": 2}).json()


def test_interpolation_walks_from_one_sample_to_the_other_and_back(client, runs):
    response = client.get("/api/interpolation.gif", params={"seed_a": 5, "seed_b": 9, "steps": 6,
                                                            "digit": 4, "scale": 1})
    assert response.status_code == 200 and response.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(response.content))
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L")))
    gen = load_generator(runs["best"])
    start, end = gen.sample(1, seed=5, digit=4)[0], gen.sample(1, seed=9, digit=4)[0]
    assert len(frames) == 2 * 6 - 2
    assert np.array_equal(frames[0], start) and np.array_equal(frames[5], end)
    assert np.array_equal(frames[4], frames[6])  # and back again


@pytest.mark.parametrize("dist", ["normal", "uniform", "semicircle"])
def test_interpolation_path_ends_at_both_vectors_and_stays_in_distribution(dist):
    config = NoiseConfig(dist=dist, dim=100, low=-1.0, high=1.0)
    a, b = sample_noise(config, 2, torch.Generator().manual_seed(0))
    path = interpolate(a, b, 9, dist)
    assert path.shape == (9, 100)
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    if dist == "normal":  # slerp keeps the norm typical (about 10 for 100-d) all the way
        assert path.norm(dim=1).min() > 0.9 * min(a.norm(), b.norm())
    else:
        assert path.abs().max() <= 1.0


@pytest.mark.parametrize("query, status, words", [
    ({"n": 0}, 422, "n=0: Input should be greater than or equal to 1"),
    ({"n": MAX_COUNT + 1}, 422, f"n={MAX_COUNT + 1}: Input should be less than or equal to {MAX_COUNT}"),
    ({"seed": "abc"}, 422, "seed=abc: Input should be a valid integer"),
    ({"seed": "1.5"}, 422, "seed=1.5: Input should be a valid integer"),
    ({"noise": "cauchy"}, 422, "noise=cauchy: Input should be 'normal', 'uniform' or 'semicircle'"),
    ({"digit": 10}, 422, "digit=10: Input should be less than or equal to 9"),
    ({"scale": 100}, 422, "scale=100"),
])
def test_bad_parameters_get_a_4xx_with_one_line(client, query, status, words):
    response = client.get("/api/grid.png", params=query)
    assert response.status_code == status
    assert words in response.json()["error"] and "\n" not in response.json()["error"]


def test_refusals_of_the_model_and_of_bodies(client, runs):
    unconditional = TestClient(create_app(runs["seed-002"]))
    response = unconditional.get("/api/grid.png", params={"digit": 3})
    assert response.status_code == 400
    assert response.json()["error"].startswith("digit=3: this generator is not class-conditional")
    response = unconditional.get("/api/grid.png", params={"by_class": "true"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("by_class=true needs a class-conditional generator")
    assert unconditional.get("/api/info").json()["conditional"] is False
    response = client.post("/api/info", content=b"x" * 5000)
    assert response.status_code == 413 and "query string" in response.json()["error"]
    assert client.get("/api/interpolation.gif", params={"steps": 1}).status_code == 422
    response = client.get("/api/nope")
    assert response.status_code == 404 and response.json()["error"].startswith(
        "GET /api/nope: Not Found: the API is /api/info")
    response = client.delete("/api/info")
    assert response.status_code == 405 and "Method Not Allowed" in response.json()["error"]
    assert list(client.get("/api/openapi.json").json()["paths"]) == [
        "/api/info", "/api/grid.png", "/api/samples", "/api/interpolation.gif"]


def test_serve_refuses_a_missing_run_and_a_busy_port_in_one_line(runs, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(runs["seed-002"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert len(err.strip().splitlines()) == 1


def test_load_benchmark_runs_with_no_errors(runs):
    script = Path(__file__).parents[1] / "benchmarks" / "serve_load.py"
    done = subprocess.run([sys.executable, str(script), str(runs["best"]), "--requests", "3",
                           "--concurrency", "2", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| grid 256 (PNG) | 3 | 0 |" in done.stdout and "| refused: n=999 | 3 | 0 |" in done.stdout


# ---------------------------------------------------------------------------------------
# The page, in a real browser (conftest.py's `browser`).


@pytest.fixture(scope="module")
def server(runs):
    """`mnistgan serve RUN --port 0` as a user starts it; yields its address."""
    process = subprocess.Popen([sys.executable, "-m", "mnistgan", "serve", str(runs["best"]), "--port", "0"],
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"at (http://\S+/)", line)
    assert match, f"the server did not start: {line}{process.stderr.read() if process.poll() else ''}"
    yield match.group(1)
    process.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
    assert process.wait(timeout=20) == 0
    said = process.stderr.read().strip().splitlines()  # uvicorn's warnings for each 503, if any
    assert said[-1] == "mnistgan: stopped"
    assert all(line == "WARNING:  Exceeded concurrency limit." for line in said[:-1]), said


def test_beyond_its_connection_limit_the_server_answers_503_and_keeps_serving(server):
    """With MAX_CONNECTIONS connections held open, every further request gets 503 at once;
    once they close, the server serves a burst of grids normally. (Holding idle connections
    makes the limit deterministic: a burst of real requests races their completions.)"""
    import concurrent.futures
    import socket
    import time
    import urllib.error
    import urllib.parse
    import urllib.request

    from mnistgan.serve.app import MAX_CONNECTIONS

    def get(path):
        try:
            with urllib.request.urlopen(server + path, timeout=120) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    address = urllib.parse.urlsplit(server)
    held = [socket.create_connection((address.hostname, address.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            refused = list(pool.map(get, [f"api/grid.png?n=128&seed={i}" for i in range(8)]))
        assert refused == [503] * 8, refused
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 30  # the server notices the closes on its own schedule
    while get("api/info") != 200:
        assert time.monotonic() < deadline, "the server still refuses after its connections closed"
        time.sleep(0.1)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        served = list(pool.map(get, [f"api/grid.png?n=128&scale=1&seed={i}" for i in range(16)]))
    assert served == [200] * 16, served


# null while the image is still decoding: a blank canvas drawn from a half-loaded image would
# count as "changed" before the new grid (and its size) is there.
PIXELS = """(id) => { const img = document.getElementById(id);
    if (!img.complete || img.naturalWidth === 0) return null;
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL(); }"""


def test_the_page_rerolls_picks_digits_switches_noise_and_shows_errors(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    assert "class-conditional" in page.text_content("#model")
    assert page.is_hidden("#error")

    def changed(action, before):
        action()
        shown = f"({PIXELS})('grid')"
        page.wait_for_function(f"() => {{ const p = {shown}; return p !== null && p !== {before!r}; }}",
                               timeout=30_000)
        return page.evaluate(PIXELS, "grid")

    first = page.evaluate(PIXELS, "grid")
    assert page.evaluate("document.getElementById('grid').naturalWidth") == 2 * (8 * 28 + 9 * 2)
    seed = page.input_value("#seed")
    after_reroll = changed(lambda: page.click("#reroll"), first)
    assert page.input_value("#seed") != seed
    after_digit = changed(lambda: page.select_option("#digit", "3"), after_reroll)
    after_noise = changed(lambda: page.select_option("#noise", "semicircle"), after_digit)
    size = "[document.getElementById('grid').naturalWidth, document.getElementById('grid').naturalHeight]"
    by_rows = changed(lambda: page.select_option("#digit", "rows"), after_noise)  # 64: 6 of each
    assert page.evaluate(size) == [2 * (6 * 28 + 7 * 2), 2 * (10 * 28 + 11 * 2)]
    changed(lambda: page.select_option("#digit", ""), by_rows)
    assert page.evaluate(size) == [2 * (8 * 28 + 9 * 2)] * 2

    # The interpolation is an animation of 28x28 frames drawn by the server.
    page.wait_for_function("() => document.getElementById('walk').naturalWidth === 28", timeout=30_000)
    walk = page.get_attribute("#walk", "src")
    page.click("#new-walk")
    page.wait_for_function(f"() => document.getElementById('walk').src !== {walk!r}", timeout=30_000)

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "grid.png"
    download.value.save_as(saved)
    assert Image.open(saved).size == (2 * (8 * 28 + 9 * 2),) * 2

    page.fill("#count", str(MAX_COUNT + 44))
    page.dispatch_event("#count", "change")
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    too_many = f"n={MAX_COUNT + 44}: Input should be less than or equal to {MAX_COUNT}"
    assert page.text_content("#error") == too_many
    page.fill("#seed", "seven")
    page.fill("#count", "9")
    page.dispatch_event("#seed", "change")
    page.wait_for_function("() => document.getElementById('error').textContent.startsWith('seed=seven')",
                           timeout=30_000)
    page.fill("#seed", "7")
    page.dispatch_event("#seed", "change")
    page.wait_for_function(f"() => document.getElementById('grid').naturalWidth === {2 * (3 * 28 + 4 * 2)}",
                           timeout=30_000)
    assert page.is_hidden("#error")
    page.close()


def test_the_page_keeps_its_state_in_its_address(server, browser):
    """A link with ?n=&seed=&noise=&digit=&walk= opens that grid; each change updates the link."""
    page = browser.new_page()
    page.goto(f"{server}?n=12&seed=4242&noise=uniform&digit=3&walk=77")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    assert [page.input_value(f"#{id}") for id in ("count", "seed", "noise", "digit")] == \
        ["12", "4242", "uniform", "3"]
    expected = page.evaluate("""async () => {
        const r = await fetch('/api/grid.png?n=12&seed=4242&noise=uniform&digit=3');
        const img = new Image(); img.src = URL.createObjectURL(await r.blob()); await img.decode();
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL(); }""")
    assert page.evaluate(PIXELS, "grid") == expected
    assert "seed_b=77" in page.evaluate("decodeURIComponent(performance.getEntriesByType('resource')"
                                        ".map((e) => e.name).join(' '))")
    page.click("#reroll")
    page.wait_for_function("() => !location.search.includes('seed=4242')", timeout=30_000)
    query = dict(pair.split("=") for pair in page.evaluate("location.search")[1:].split("&"))
    assert query == {"n": "12", "seed": page.input_value("#seed"), "noise": "uniform", "digit": "3",
                     "walk": "77"}
    page.goto(f"{server}?digit=42&noise=plaid")  # not offered: the defaults stay
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    assert page.input_value("#digit") == "" and page.input_value("#noise") != "plaid"
    assert page.is_hidden("#error")
    page.close()
