"""Input forms: everything `preprocess` accepts gives the batch of the equivalent uint8 HWC frames,
documented conversions are exact, and every refusal names the problem."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
import torch
from conftest import make_config, random_image

import rfpipe
from rfpipe.preprocess.inputs import to_frames

STRETCH = make_config(size=(40, 32))
LETTERBOX_GRAY = make_config(mode="letterbox", size=(36, 36), dataset=(48, 40), grayscale=True, padding_value=127)
CONFIGS = {"stretch": STRETCH, "letterbox-gray": LETTERBOX_GRAY}


def call(images, config=STRETCH, **kwargs):
    """`preprocess` with the reference implementation unless told otherwise."""
    kwargs.setdefault("implementation", "reference")
    return rfpipe.preprocess(images, config, **kwargs)


@pytest.fixture(params=["reference", "cpu"])
def run(request):
    """Accepted forms go through both CPU implementations (they share `to_frames`, not the pixel code)."""
    return lambda images, config=STRETCH, **kwargs: call(images, config, implementation=request.param, **kwargs)


def assert_same(a, b):
    batch_a, meta_a = a
    batch_b, meta_b = b
    assert batch_a.dtype == torch.float32 and batch_a.is_contiguous()
    assert torch.equal(batch_a, batch_b)
    assert meta_a == meta_b


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return [random_image(rng, w, h) for w, h in ((50, 30), (23, 61), (80, 80))]


# --- accepted forms ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_single_hwc_array_gives_a_batch_of_one(images, name, run):
    batch, meta = run(images[0], CONFIGS[name])
    target = CONFIGS[name].training_size
    assert batch.shape == (1, 3, target.height, target.width)
    assert batch.dtype == torch.float32 and batch.device.type == "cpu" and batch.is_contiguous()
    assert meta[0].original_size == (50, 30)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_list_of_mixed_sizes_equals_each_image_alone(images, name, run):
    cfg = CONFIGS[name]
    batch, meta = run(images, cfg)
    assert batch.shape[0] == 3
    for i, image in enumerate(images):
        single, single_meta = run(image, cfg)
        assert torch.equal(batch[i : i + 1], single)
        assert meta[i] == single_meta[0]
    assert_same(run(tuple(images), cfg), (batch, meta))


def test_nhwc_array_equals_list_of_its_frames(images, run):
    stack = np.stack([images[2], images[2][::-1].copy(), images[2][:, ::-1].copy()])
    assert_same(run(stack), run(list(stack)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_uint8_tensor_layouts_equal_the_numpy_frame(images, name, run):
    cfg = CONFIGS[name]
    image = images[0]  # 30 x 50: neither side looks like a channel count
    expected = run(image, cfg)
    hwc = torch.from_numpy(image)
    assert_same(run(hwc, cfg), expected)
    assert_same(run(hwc.permute(2, 0, 1), cfg), expected)  # CHW, a non-contiguous view
    assert_same(run(hwc.permute(2, 0, 1).contiguous(), cfg), expected)
    batch = run(np.stack([image, image]), cfg)
    assert_same(run(hwc.unsqueeze(0).repeat(2, 1, 1, 1), cfg), batch)  # NHWC
    assert_same(run(hwc.permute(2, 0, 1).unsqueeze(0).repeat(2, 1, 1, 1), cfg), batch)  # NCHW


def test_uint8_tensor_with_three_rows_is_read_as_hwc(run):
    # 3 x 5 x 3: the last axis is a channel count, so it is HWC (3 rows), as the reference reads it
    image = np.arange(45, dtype=np.uint8).reshape(3, 5, 3)
    assert_same(run(torch.from_numpy(image)), run(image))


def test_non_contiguous_and_negative_stride_views_equal_their_copies(images, run):
    big = images[2]
    for view in (big[::2, 1::3], big[::-1], big[:, ::-1], big[::-2, ::-3], big[10:60, 5:70]):
        assert not view.flags.c_contiguous or view.base is not None
        assert_same(run(view), run(np.ascontiguousarray(view)))
        assert_same(run(view, LETTERBOX_GRAY), run(np.ascontiguousarray(view), LETTERBOX_GRAY))


def test_channel_reversed_view_as_rgb_equals_bgr_frame(images, run):
    # a BGR frame read as RGB through a negative-stride channel view: identical network input
    for cfg in (STRETCH, LETTERBOX_GRAY, make_config(size=(40, 32), color_mode="bgr")):
        image = images[1]
        assert_same(run(image[:, :, ::-1], cfg, input_color_format="rgb"), run(image, cfg, input_color_format="bgr"))


def test_input_color_format_none_means_bgr(images, run):
    assert_same(run(images[0], input_color_format=None), run(images[0], input_color_format="bgr"))
    assert not torch.equal(run(images[0], input_color_format="rgb")[0], run(images[0], input_color_format="bgr")[0])


def test_mixed_list_of_arrays_and_tensors(images, run):
    mixed = [images[0], torch.from_numpy(images[1]).permute(2, 0, 1), images[2].astype(np.float32) / 255]
    expected = run([images[0], images[1], (images[2].astype(np.float32) / 255 * 255.0).clip(0, 255).astype(np.uint8)])
    assert_same(run(mixed), expected)


# --- float numpy: x * 255, clipped, truncated --------------------------------------------------

FLOAT_LEVELS = [0.0, 0.5, 0.999, 1.0, 1.5, -0.3, 0.1, 0.0039]
# 0.5*255 = 127.5 -> 127; 0.999*255 = 254.7 -> 254; 1.5*255 -> clipped 255; -0.3*255 -> clipped 0;
# 0.1*255 = 25.5 -> 25; 0.0039*255 = 0.99 -> 0: truncation, never rounding
UINT8_LEVELS = [0, 127, 254, 255, 255, 0, 25, 0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_numpy_is_scaled_clipped_and_truncated(dtype, run):
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(FLOAT_LEVELS), (20, 26, 3))
    floats = np.array(FLOAT_LEVELS, dtype=dtype)[idx]
    expected = np.array(UINT8_LEVELS, dtype=np.uint8)[idx]
    assert_same(run(floats), run(expected))
    assert_same(run(floats, LETTERBOX_GRAY), run(expected, LETTERBOX_GRAY))


def test_float_numpy_batch_and_views(images, run):
    floats = np.stack([images[2], images[2][::-1]]).astype(np.float64) / 255
    assert_same(run(floats), run(list(floats[:, :, ::-1][:, :, ::-1])))


# --- float tensors: tensor semantics, always a stretch ----------------------------------------


def test_float_tensor_layouts_agree(images, run):
    chw = torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255
    expected = run(chw, LETTERBOX_GRAY)
    batch, meta = expected
    assert batch.shape == (1, 3, 36, 36)
    assert meta[0].nonsquare_intermediate_size is None  # no dataset-version step for float tensors
    assert meta[0].scale_width == 36 / 50 and meta[0].scale_height == 36 / 30
    assert_same(run(chw.permute(1, 2, 0), LETTERBOX_GRAY), expected)  # HWC
    assert_same(run(chw.permute(1, 2, 0).contiguous(), LETTERBOX_GRAY), expected)
    assert_same(run(chw.unsqueeze(0), LETTERBOX_GRAY), expected)  # NCHW
    assert_same(run([chw], LETTERBOX_GRAY), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_float_tensors_of_other_precisions_are_processed_in_float32(dtype, run):
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])  # exact in every float type
    chw = levels[torch.randint(0, 5, (3, 21, 17), generator=torch.Generator().manual_seed(0))]
    assert_same(run(chw.to(dtype)), run(chw))


def test_float_tensor_is_not_the_uint8_path(images, run):
    # tensor semantics differ from Pillow's resize (DESIGN.md): pin that they are not confused
    chw = torch.from_numpy(images[0]).permute(2, 0, 1)
    assert not torch.equal(run(chw.float() / 255)[0], run(chw)[0])


@pytest.mark.parametrize("implementation", ["reference", "cpu"])
def test_implementations_only_ever_receive_uint8_frames(images, implementation, monkeypatch):
    """`preprocess()` recognises float tensors once and gives them to their own kernel."""
    entry = importlib.import_module("rfpipe.preprocess")  # the package; `rfpipe.preprocess` is the function
    real = entry.resolve_implementation(implementation, torch.device("cpu"))
    seen = []

    def recording(frames, *args):
        seen.append([f.is_float_tensor for f in frames])
        return real(frames, *args)

    monkeypatch.setattr(entry, "resolve_implementation", lambda name, device: recording)
    floats = [torch.from_numpy(images[1]).permute(2, 0, 1).float() / 255, torch.rand(3, 20, 30)]
    mixed = [images[0], floats[0], images[2], floats[1]]
    batch, meta = rfpipe.preprocess(mixed, STRETCH, implementation=implementation)
    assert seen == [[False, False]]  # the uint8 frames, once; never a float tensor
    rfpipe.preprocess(floats, STRETCH, implementation=implementation)
    assert seen == [[False, False]]  # a float-only batch does not reach the implementation at all
    # The split batch is put back in input order: each row equals that image alone.
    for i, image in enumerate(mixed):
        alone, alone_meta = call(image, implementation=implementation)
        assert torch.equal(batch[i], alone[0]) and meta[i] == alone_meta[0]


# --- single-channel conversion -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_single_channel_frames_equal_the_repeated_three_channel_frame(images, name, run):
    cfg = CONFIGS[name]
    gray = images[1][:, :, 1].copy()
    three = np.repeat(gray[:, :, None], 3, axis=2)
    expected = run(three, cfg)
    assert_same(run(gray, cfg), expected)  # H x W
    assert_same(run(gray[:, :, None], cfg), expected)  # H x W x 1
    assert_same(run(torch.from_numpy(gray), cfg), expected)
    assert_same(run(torch.from_numpy(gray).unsqueeze(0), cfg), expected)  # 1 x H x W
    assert_same(run(torch.from_numpy(gray).unsqueeze(-1), cfg), expected)  # H x W x 1
    pair, _ = run([gray, three], cfg)
    assert torch.equal(pair[:1], expected[0]) and torch.equal(pair[1:], expected[0])
    float_gray = torch.from_numpy(gray).float() / 255
    assert_same(run(float_gray.unsqueeze(0), cfg), run(float_gray.expand(3, -1, -1), cfg))
    assert_same(run(float_gray, cfg), run(float_gray.expand(3, -1, -1), cfg))


def test_single_channel_float_numpy_is_converted_then_repeated(run):
    gray = np.linspace(0, 1, 24 * 30).reshape(24, 30)
    expected = np.repeat((gray * 255.0).clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    assert_same(run(gray), run(expected))


def test_to_frames_sizes():
    frames = to_frames([np.zeros((5, 7, 3), np.uint8), torch.zeros(3, 9, 11), torch.zeros(13, 15, 3, dtype=torch.uint8)])
    assert [f.size for f in frames] == [(7, 5), (11, 9), (15, 13)]
    assert [f.is_float_tensor for f in frames] == [False, True, False]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_uint8_cuda_tensor_equals_numpy_frame(images, run):
    assert_same(run(torch.from_numpy(images[0]).cuda()), run(images[0]))


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 12, 4), np.uint8),
        torch.zeros(10, 12, 4, dtype=torch.uint8),
        torch.zeros(4, 10, 12, dtype=torch.uint8),
        torch.zeros(4, 10, 12),
        torch.zeros(10, 12, 4),
        np.zeros((10, 12, 4), np.float32),
    ],
    ids=["numpy-hwc", "tensor-hwc", "tensor-chw", "float-tensor-chw", "float-tensor-hwc", "float-numpy"],
)
def test_four_channel_images_are_refused(image):
    with pytest.raises(ValueError, match=r"4-channel images are not supported .*drop the alpha channel"):
        call(image)


@pytest.mark.parametrize("channels", [2, 5])
def test_other_channel_counts_are_refused(channels):
    with pytest.raises(ValueError, match=f"expected 3 channels \\(or 1, which is repeated\\), got {channels}"):
        call(np.zeros((10, 12, channels), np.uint8))


@pytest.mark.parametrize(
    "image, dtype",
    [
        (np.zeros((10, 12, 3), np.uint16), "uint16"),
        (np.zeros((10, 12, 3), np.int32), "int32"),
        (np.zeros((10, 12, 3), np.int8), "int8"),
        (np.zeros((10, 12, 3), bool), "bool"),
        (np.zeros((10, 12, 3), np.complex64), "complex64"),
        (torch.zeros(10, 12, 3, dtype=torch.int32), "torch.int32"),
        (torch.zeros(10, 12, 3, dtype=torch.int64), "torch.int64"),
        (torch.zeros(10, 12, 3, dtype=torch.uint16), "torch.uint16"),
        (torch.zeros(10, 12, 3, dtype=torch.bool), "torch.bool"),
    ],
)
def test_unsupported_dtypes_are_refused(image, dtype):
    with pytest.raises(TypeError, match=f"unsupported (tensor )?dtype {dtype}; pass uint8 pixels"):
        call(image)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 12, 3), np.uint8),
        np.zeros((10, 0, 3), np.uint8),
        np.zeros((0, 0), np.uint8),
        np.zeros((0, 12, 3), np.float32),
        torch.zeros(0, 12, 3, dtype=torch.uint8),
        torch.zeros(3, 10, 0, dtype=torch.uint8),
        torch.zeros(3, 0, 12),
    ],
)
def test_zero_size_images_are_refused(image):
    with pytest.raises(ValueError, match="zero-size image"):
        call(image)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_refused(bad):
    image = np.full((10, 12, 3), 0.5, np.float32)
    image[3, 4, 1] = bad
    with pytest.raises(ValueError, match="float image contains NaN or infinite values"):
        call(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    with pytest.raises(ValueError, match="float image contains NaN or infinite values"):
        call(tensor)
    with pytest.raises(ValueError, match=r"images\[1\]: float image contains NaN"):
        call([np.zeros((4, 4, 3), np.uint8), image.astype(np.float16)])


@pytest.mark.parametrize(
    "images",
    [[], (), np.zeros((0, 10, 12, 3), np.uint8), torch.zeros(0, 3, 10, 12, dtype=torch.uint8)],
    ids=["list", "tuple", "numpy-batch", "tensor-batch"],
)
def test_empty_inputs_are_refused(images):
    with pytest.raises(ValueError, match="no images"):
        call(images)


def test_batches_inside_a_list_are_refused():
    with pytest.raises(ValueError, match=r"images\[1\]: list items must be single images"):
        call([np.zeros((10, 12, 3), np.uint8), np.zeros((2, 10, 12, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"images\[0\]: list items must be single images"):
        call([torch.zeros(1, 3, 10, 12)])


@pytest.mark.parametrize("image", [np.zeros((2, 2, 10, 12, 3), np.uint8), np.zeros(12, np.uint8), torch.zeros(2, 2, 3, 4, 5)])
def test_wrong_dimensionality_is_refused(image):
    with pytest.raises(ValueError, match="expected (an H x W x C image|a 3-D image tensor)"):
        call(image)


@pytest.mark.parametrize(
    "images, kind",
    [
        ("photo.jpg", "str"),
        (None, "NoneType"),
        ({"image": 1}, "dict"),
        (b"\xff\xd8", "bytes"),
        (np.uint8(7), "uint8"),
    ],
)
def test_non_images_are_refused(images, kind):
    with pytest.raises(TypeError, match=f"images must be a numpy array, a torch tensor or a list of them, got {kind}"):
        call(images)


def test_non_image_list_items_are_refused():
    with pytest.raises(TypeError, match=r"images\[1\]: expected a numpy array or a torch tensor, got str"):
        call([np.zeros((10, 12, 3), np.uint8), "photo.jpg"])
    with pytest.raises(TypeError, match=r"images\[0\]: expected a numpy array or a torch tensor, got list"):
        call([[1, 2], [3, 4]])


def test_pil_images_are_refused():
    from PIL import Image

    with pytest.raises(TypeError, match="got Image"):
        call(Image.new("RGB", (12, 10)))


@pytest.mark.parametrize("fmt", ["RGB", "rgba", "hsv", ""])
def test_unknown_input_color_format(fmt):
    with pytest.raises(ValueError, match=f"input_color_format must be 'bgr', 'rgb' or None \\(meaning bgr\\), got '{fmt}'"):
        call(np.zeros((10, 12, 3), np.uint8), input_color_format=fmt)


@pytest.mark.parametrize("name", ["fast", "pillow", "", "CPU"])
def test_unknown_implementation(name):
    with pytest.raises(ValueError, match=f"unknown implementation '{name}' \\(expected one of 'reference', 'cpu', 'cuda', 'auto'\\)"):
        call(np.zeros((10, 12, 3), np.uint8), implementation=name)


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", None, 1.5])
def test_unknown_device(device):
    with pytest.raises(ValueError, match="unknown device"):
        call(np.zeros((10, 12, 3), np.uint8), device=device)


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_unsupported_device_types(device):
    with pytest.raises(ValueError, match=f"unsupported device '{device}': rfpipe runs on 'cpu' or 'cuda'"):
        call(np.zeros((10, 12, 3), np.uint8), device=device)


def test_cuda_implementation_needs_a_cuda_device():
    with pytest.raises(ValueError, match="implementation 'cuda' needs a CUDA device, got device='cpu'"):
        call(np.zeros((10, 12, 3), np.uint8), implementation="cuda", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_device_without_cuda_is_refused_up_front(device):
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        call(np.zeros((10, 12, 3), np.uint8), device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_missing_gpu_index_is_refused():
    index = torch.cuda.device_count()
    with pytest.raises(ValueError, match="no such GPU"):
        call(np.zeros((10, 12, 3), np.uint8), device=f"cuda:{index}")


@pytest.mark.parametrize(
    "size, error",
    [(0, ValueError), (-1, ValueError), ((64, 0), ValueError), ((1, 2, 3), ValueError), ("large", TypeError), (64.0, TypeError), (True, TypeError)],
)
def test_bad_image_size(size, error):
    cfg = make_config(size=(40, 32), dynamic={"type": "any-size"})
    with pytest.raises(error, match="image_size must be"):
        call(np.zeros((10, 12, 3), np.uint8), cfg, image_size=size)


def test_config_must_be_a_model_config():
    with pytest.raises(TypeError, match="config must be an rfpipe.ModelConfig, got dict"):
        rfpipe.preprocess(np.zeros((10, 12, 3), np.uint8), {"network_input": {}}, implementation="reference")


def test_pinned_frame_is_public_and_works_without_cuda():
    """`rfpipe.pinned_frame` (the documented fast path) imports and runs on a machine without CUDA."""
    import subprocess
    import sys

    code = ("import rfpipe; from rfpipe.preprocess.cuda import pinned_frame; f = rfpipe.pinned_frame(4, 6); "
            "assert 'pinned_frame' in rfpipe.__all__ and pinned_frame is rfpipe.pinned_frame; "
            "print(f.shape, f.dtype)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(4,", "6,", "3)", "uint8"]
    frame = rfpipe.pinned_frame(30, 50)
    frame[:] = random_image(np.random.default_rng(2), 50, 30)
    assert_same(call(frame), call(frame.copy()))
