"""A tiny analysis: run it in a sandbox from the python-data template with `python3 analysis.py`."""
import numpy as np
import pandas as pd

frame = pd.DataFrame({"x": np.arange(10), "y": np.arange(10) ** 2})
print(frame["y"].sum(), frame["y"].mean())
