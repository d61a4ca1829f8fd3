"""Instance autoscaling of a real-time endpoint: the server keeps no state between requests,
so SageMaker may add and remove instances behind the endpoint as traffic changes."""

import boto3


def autoscale(endpoint_name, min_instances=1, max_instances=4, invocations_per_instance=600,
              variant="AllTraffic"):
    """Track invocations per instance per minute (measure yours with bench/locustfile.py)."""
    autoscaling = boto3.client("application-autoscaling")
    resource_id = f"endpoint/{endpoint_name}/variant/{variant}"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=dimension,
        MinCapacity=min_instances, MaxCapacity=max_instances,
    )
    autoscaling.put_scaling_policy(
        PolicyName=f"{endpoint_name}-invocations-per-instance",
        ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=dimension,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(invocations_per_instance),
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 60,
            "ScaleInCooldown": 300,
        },
    )
