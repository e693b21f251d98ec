"""Pure tensor functions: cameras, rays, volume rendering, shading, Gaussian rasterization."""
