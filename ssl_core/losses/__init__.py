"""Self-supervised losses, each a typed ``nn.Module`` documenting its paper, shapes and errors."""

from ssl_core.losses.barlow_twins import BarlowTwinsLoss
from ssl_core.losses.dino import DINOLoss
from ssl_core.losses.distill import EmbeddingDistillationLoss, LogitDistillationLoss, SimilarityDistillationLoss
from ssl_core.losses.info_nce import FeatureQueue, InfoNCELoss
from ssl_core.losses.memory_bank import MemoryBank, MemoryBankNCELoss
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.losses.ntxent import NTXentLoss
from ssl_core.losses.swav import SwAVLoss, sinkhorn_knopp
from ssl_core.losses.vicreg import VICRegLoss

__all__ = [
    "BarlowTwinsLoss",
    "DINOLoss",
    "EmbeddingDistillationLoss",
    "FeatureQueue",
    "InfoNCELoss",
    "LogitDistillationLoss",
    "MemoryBank",
    "MemoryBankNCELoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "SimilarityDistillationLoss",
    "SwAVLoss",
    "VICRegLoss",
    "sinkhorn_knopp",
]
