"""Neural-network building blocks: graph attention and graph transformers, on a coarse-conditioned fine graph or on
a single cell graph."""

from graphsr.nn.attention import EventContext, GraphAttention
from graphsr.nn.compiled import use_compile
from graphsr.nn.transformer import Block, CellTransformer, GraphTransformer, NoiseEmbedding

__all__ = ["Block", "CellTransformer", "EventContext", "GraphAttention", "GraphTransformer", "NoiseEmbedding",
           "use_compile"]
