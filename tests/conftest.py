from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from anygen.core import CoreConfig  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.tokenizers.image import ImageVQ, ImageVQConfig  # noqa: E402
from anygen.tokenizers.quantizer import QuantizerConfig  # noqa: E402
from anygen.tokenizers.simple import GridImageTokenizer, MuLawAudioTokenizer  # noqa: E402
from anygen.tokenizers.text import TextTokenizer  # noqa: E402

CAPTIONS = ["a red circle", "a blue square on the left", "two green triangles", "say hello", "a yellow star"]
TINY_CORE = CoreConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                       max_position_embeddings=512)


@pytest.fixture(scope="session")
def text_tokenizer() -> TextTokenizer:
    return TextTokenizer.train(CAPTIONS * 4, vocab_size=300)


@pytest.fixture()
def tiny_model(text_tokenizer: TextTokenizer) -> AnyGen:
    """A random two-modality model: 32x32 images as 16 grid codes, audio as 2 interleaved codebooks."""
    torch.manual_seed(0)
    tokenizers = {"image": GridImageTokenizer(cell=8, levels=4), "audio": MuLawAudioTokenizer()}
    return AnyGen.create(text_tokenizer, tokenizers, TINY_CORE).eval()


def tiny_image_vq() -> ImageVQ:
    """16x16 px -> 4x4 = 16 codes of a 16-entry codebook, with its codebook initialised by one training pass."""
    torch.manual_seed(0)
    config = ImageVQConfig(channels=[8, 16, 16], res_blocks=0, latent_dim=4, image_size=[16, 16],
                           quantizer=QuantizerConfig(codebook_size=16, codebook_dim=4))
    tokenizer = ImageVQ(config)
    tokenizer(torch.rand(8, 3, 16, 16))  # k-means initialisation of the codebook
    return tokenizer.eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Models this small run fastest on one thread (and never wait for a busy second core); a module asks for it
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seed(n: int) -> torch.Generator:
    return torch.Generator().manual_seed(n)


def interrupted_at(step: int, image_batch):
    """``image_batch`` (a recipe's batch function) that raises KeyboardInterrupt for training step ``step``, as a
    run killed there."""

    def batch(sources, batch_size, size, seed, at, split="train", folder=None):
        if split == "train" and at == step:
            raise KeyboardInterrupt(f"killed at step {step}")
        return image_batch(sources, batch_size, size, seed, at, split, folder)

    return batch


def answer_with_one_picture(pipe) -> int:
    """Make ``pipe``'s core answer any prompt with one picture of random codes, then ``<|eos|>``; returns the
    ``max_new_tokens`` that holds exactly that answer. Every token embeds as the same vector, so the last layer puts
    out the same ``h`` at every position; the output matrix (untied) is zero but for the rows of ``<|image|>`` and
    ``<|eos|>``, along ``h``, the first twice as far: greedy text opens the picture, and ends once no other fits."""
    core, vocab = pipe.model.core, pipe.model.vocab
    with torch.no_grad():
        embed = core.get_input_embeddings().weight
        embed.copy_(embed[:1].expand_as(embed).clone())
        h = core.model(input_ids=torch.tensor([[vocab.bos_id]])).last_hidden_state[0, -1]
        head = torch.zeros_like(core.lm_head.weight)
        head[vocab.begin_id("image")] = 10 * h / h.dot(h)
        head[vocab.eos_id] = 5 * h / h.dot(h)
        core.lm_head.weight = torch.nn.Parameter(head)
    return int(pipe.model.tokenizers["image"].tokens_for(pipe.image_size)) + 3
