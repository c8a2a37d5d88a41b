"""Normal reference: a nearest-neighbour memory bank of the support normals' patch features.

``views`` makes the dihedral views of the support images, ``bank`` embeds features and finds nearest
neighbours (with leave-one-out exclusion for training images), ``maps`` turns per-level distances into a
smoothed anomaly map, ``calibration`` fits the decision threshold from training data only, ``edge`` weighs the
image score by the normal distance profile towards the picture's edge.
"""

from uniadc.reference.bank import ReferenceBank, build_bank, embed_levels, nearest_distances
from uniadc.reference.calibration import Calibration, fit_calibration
from uniadc.reference.edge import edge_distance, edge_weighted_max, fit_edge_gain, weighted_maps
from uniadc.reference.maps import distance_map, smooth_sigma
from uniadc.reference.scorer import ReferenceScorer
from uniadc.reference.views import DIHEDRAL_VIEWS, dihedral_masks, dihedral_view, dihedral_views

__all__ = [
    "DIHEDRAL_VIEWS",
    "Calibration",
    "ReferenceBank",
    "ReferenceScorer",
    "build_bank",
    "dihedral_masks",
    "dihedral_view",
    "dihedral_views",
    "distance_map",
    "edge_distance",
    "edge_weighted_max",
    "embed_levels",
    "fit_calibration",
    "fit_edge_gain",
    "nearest_distances",
    "smooth_sigma",
    "weighted_maps",
]
