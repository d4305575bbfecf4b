"""Inference latency on a target device: measured, and predicted before a model is trained.

* :func:`measure`: a tightened measurement (per-call quantiles, rounds, re-measurement when noisy);
* :func:`predict`: sparsity-aware prediction for any ``nn.Module`` of standard layers, from a
  calibrated (or bundled, rescaled) predictor; :func:`predict_details` says how;
* :func:`refine`: feed a measured latency back, refitting the whole-model correction online, in
  two steps where measuring and predicting run apart (:func:`observe` on a worker, :func:`record`
  where predictions read it); :func:`use_observations` says where observations are kept;
* :func:`available_targets`, :func:`describe_targets`: what this machine can time;
* :func:`nas.latency.calibrate.calibrate` and :mod:`nas.latency.evaluate` back ``nas hardware``.
"""

from nas.latency.api import observe, predict, predict_details, prepare_trace, record, refine
from nas.latency.features import UnsupportedLayer
from nas.timing.measure import measure, measure_interleaved
from nas.latency.predictor import NoPredictor
from nas.latency.store import ObservationSource, use_observations
from nas.timing.targets import TARGETS, TargetUnavailable, available_targets, describe_targets

__all__ = [
    "TARGETS",
    "NoPredictor",
    "ObservationSource",
    "TargetUnavailable",
    "UnsupportedLayer",
    "available_targets",
    "describe_targets",
    "measure",
    "measure_interleaved",
    "observe",
    "predict",
    "predict_details",
    "prepare_trace",
    "record",
    "refine",
    "use_observations",
]
