"""Configuration of the expression-transfer model source (kept light: imported by `ModelConfig`)."""

from dataclasses import dataclass
from enum import Enum


class SourceTopology(Enum):
    """The topology of the source (adult) heads."""

    anny = "anny"  # Anny's own head topology (same as the infants): M is computed all the same
    decimated = "decimated"  # a different topology: the adult template decimated and resampled


@dataclass
class TransferConfig:
    """Expression transfer from adult heads (BabyFlow 4.3).

    kappa: adults in the ensemble (paper: 40); adult_age_years: their age range (uniform);
    topology: the adults' topology; reduction: fraction of triangles removed by the decimation;
    warp: thin-plate-spline landmark warp before the projection; icp_iterations: ICP refinement steps
    (0 = none); scale_deformation: scale deformations by the adult-to-infant size ratio of the landmark
    alignment; None follows the infants' `expression_scaling` (Anny's native infant expressions are sized
    to the head by default, and so are the transferred ones).
    """

    kappa: int = 40
    adult_age_years: tuple[float, float] = (20.0, 60.0)
    topology: SourceTopology = SourceTopology.decimated
    reduction: float = 0.5
    warp: bool = True
    icp_iterations: int = 0
    scale_deformation: bool | None = None

    def __post_init__(self) -> None:
        self.adult_age_years = tuple(float(x) for x in self.adult_age_years)
        if isinstance(self.topology, str):
            self.topology = SourceTopology(self.topology)
        if not 1 <= self.kappa <= 1000:
            raise ValueError(f"transfer.kappa={self.kappa} must be in [1, 1000]")
        lo, hi = self.adult_age_years
        if not 12.0 <= lo <= hi <= 90.0:
            raise ValueError(f"transfer.adult_age_years={self.adult_age_years}: need 12 <= low <= high <= 90")
        if not 0.0 < self.reduction < 0.95:
            raise ValueError(f"transfer.reduction={self.reduction} must be in (0, 0.95)")
        if not 0 <= self.icp_iterations <= 200:
            raise ValueError(f"transfer.icp_iterations={self.icp_iterations} must be in [0, 200]")
