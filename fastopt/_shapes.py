"""Parameter shapes of well-known models, for the demo and the benchmarks (no weights)."""
from __future__ import annotations

__all__ = ["course_mlp", "small_transformer", "resnet50", "gpt2_small", "total"]


def total(shapes):
    n = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        n += k
    return n


def course_mlp(layer_dims=(64, 32, 16, 10)):
    """The course's L-layer net: W[l] (n_l, n_{l-1}) and b[l] (n_l, 1); 3 layers = 6 tensors."""
    out = []
    for a, b in zip(layer_dims[:-1], layer_dims[1:]):
        out += [(b, a), (b, 1)]
    return out


def small_transformer(d_model=512, layers=3, vocab=1024, context=256):
    """A small decoder-only transformer (~10.3M values): embeddings, per layer LayerNorms,
    fused QKV, attention output, 4x MLP, all with biases."""
    d = d_model
    out = [(vocab, d), (context, d)]
    for _ in range(layers):
        out += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    out += [(d,), (d,)]
    return out


def gpt2_small():
    """GPT-2 small: 148 tensors, 124,439,808 values (tied output embedding)."""
    return small_transformer(d_model=768, layers=12, vocab=50257, context=1024)


def resnet50():
    """ResNet-50 (torchvision layout): 161 tensors (convs, BN weight/bias, fc), 25,557,032 values."""
    out = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            out += [(width, cin, 1, 1), (width,), (width,),
                    (width, width, 3, 3), (width,), (width,),
                    (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                out += [(4 * width, cin, 1, 1), (4 * width,), (4 * width,)]
            cin = 4 * width
    out += [(1000, 2048), (1000,)]
    return out
