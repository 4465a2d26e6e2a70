from .vmamba import VSSM
from .vim import VisionMamba
