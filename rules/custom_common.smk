# Input functions of rules/custom.smk.
def custom_sources(wildcards):
    return list(custom_data.collect(config["datasets"]["custom"]["images"])["source"])


def custom_pairs_csv(wildcards):
    return config["datasets"]["custom"]["pairs"] or []
