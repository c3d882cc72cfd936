"""Every update rule of the project, one module per paper family, each built by a named constructor."""

from fl_dp.rules.base import Algorithm, ClientTask, ClientUpdate, State
from fl_dp.rules.dpsgd import DPSGD, dp_sgd
from fl_dp.rules.ef21 import EF21, EF21SGDM, ef21, ef21_norm, ef21_sgdm_norm
from fl_dp.rules.local_training import LocalTraining, dp_fedavg, fedavg
from fl_dp.rules.normec import ErrorCompensated, Uncompensated, alpha_normec, clip21, dp_normalized_sgd, mean_sgd
from fl_dp.rules.sign import ErrorFeedbackSign, SignVote, dp_sign_vote, ef_sign, sign_vote

__all__ = [
    "Algorithm",
    "ClientTask",
    "ClientUpdate",
    "State",
    "DPSGD",
    "EF21",
    "EF21SGDM",
    "ErrorCompensated",
    "ErrorFeedbackSign",
    "LocalTraining",
    "SignVote",
    "Uncompensated",
    "alpha_normec",
    "clip21",
    "dp_fedavg",
    "dp_normalized_sgd",
    "dp_sgd",
    "dp_sign_vote",
    "ef21",
    "ef21_norm",
    "ef21_sgdm_norm",
    "ef_sign",
    "fedavg",
    "mean_sgd",
    "sign_vote",
]
