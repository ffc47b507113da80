"""Ray Serve deployments: the `Gateway` ingress (`gateway`, torch-free, for CPU nodes) and the
`DiffusionModel` pools (`diffusion_model`). Import the module you need: this package imports
neither, so loading the Gateway never loads torch."""
