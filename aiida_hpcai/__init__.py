"""aiida-hpcai: AiiDA workflows that couple AI models and HPC simulation for materials discovery."""

__version__ = '0.1.0'
