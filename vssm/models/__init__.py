from .vmamba import VSSM
from .vim import VisionMamba
from .msvmamba import MSVSSM
