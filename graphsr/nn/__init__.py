"""Neural-network building blocks: graph attention and the coarse-conditioned graph transformer."""

from graphsr.nn.attention import EventContext, GraphAttention
from graphsr.nn.transformer import Block, GraphTransformer, NoiseEmbedding

__all__ = ["Block", "EventContext", "GraphAttention", "GraphTransformer", "NoiseEmbedding"]
