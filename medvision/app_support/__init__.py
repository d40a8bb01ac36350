"""Pure-Python helpers behind the Streamlit app (no ``st.*`` here).

The pages in ``pages/`` only lay out widgets; everything they compute (workspace paths, the training
process, slice overlays, charts, 3-D meshes, upload handling) is a call into this package or into the
rest of ``medvision``. That keeps the UI testable without a browser and the logic testable without UI.
"""
