"""The models: the registry and the published component configs, pipeline families, what the user
typed resolved to a model, the Hugging Face cache, and building the diffusers pipeline."""
