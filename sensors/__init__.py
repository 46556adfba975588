"""sensorlab's physics: one module per stage kind (scene, optics, photodetector, adc, raw).

These modules import nothing from ``pipeline`` but the stage contract
(:mod:`pipeline.stage`); the registry finds their stages through the
``sensorlab.stages`` entry-point group, exactly as it finds a plugin's.
"""
