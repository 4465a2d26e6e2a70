from .vmamba import VSSM
