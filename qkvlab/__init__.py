"""qkvlab: does attention need three projections?"""
__version__ = "0.1.0"
