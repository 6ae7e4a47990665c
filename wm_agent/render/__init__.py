"""Pictures of a world model, drawn with numpy and pygame (no matplotlib): ``drawing`` (pygame, fonts, canvases,
PNG), ``figures`` (``Visualizer``), ``video`` (``write_video``, ``compose_frame``, ``show_frames``) and ``episodes``
(the controller's real, dreamed and side-by-side episodes). Import names from those submodules."""
