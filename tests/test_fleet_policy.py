"""The fleet's credentials reach landing/ and nothing else: production/fleet-policy.json on an S3
server that enforces IAM (moto with authentication on), a vehicle's key against the flywheel's."""

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from flywheel import layout
from tests.conftest import moto_server

POLICY = Path(__file__).parents[1] / "production" / "fleet-policy.json"
ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def _user(iam, name: str, policy: dict) -> dict:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


@pytest.fixture
def enforcing_s3():
    """A moto server that checks every request's key against IAM, after the first three (the admin's setup)."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as endpoint:
        yield endpoint


def test_a_vehicle_key_under_the_fleet_policy_can_upload_clips_and_nothing_else(enforcing_s3):
    where = {"endpoint_url": enforcing_s3, "region_name": "us-east-1"}
    admin = _user(boto3.client("iam", **where, aws_access_key_id="setup", aws_secret_access_key="setup"), "flywheel", ALL)
    boto3.client("s3", **where, **admin).create_bucket(Bucket="fleet-bucket")
    policy = json.loads(POLICY.read_text().replace("BUCKET", "fleet-bucket").replace("PREFIX", "fw"))
    vehicle = _user(boto3.client("iam", **where, **admin), "veh001", policy)

    s3 = boto3.client("s3", **where, **vehicle)  # a vehicle's uploader, with its own key
    clip = layout.landing_key("veh001", "2026-01-05", "veh001-000001-s0")
    s3.put_object(Bucket="fleet-bucket", Key=f"fw/{clip}", Body=b"an MCAP clip")  # allowed: an upload to landing/

    denied = {
        "write a dataset": lambda: s3.put_object(Bucket="fleet-bucket", Key="fw/datasets/perception/v1/manifest.json", Body=b"{}"),
        "write beside landing": lambda: s3.put_object(Bucket="fleet-bucket", Key="fw/deploy/current.json", Body=b"{}"),
        "read a clip back": lambda: s3.get_object(Bucket="fleet-bucket", Key=f"fw/{clip}"),
        "list the bucket": lambda: s3.list_objects_v2(Bucket="fleet-bucket"),
        "delete a clip": lambda: s3.delete_object(Bucket="fleet-bucket", Key=f"fw/{clip}"),
    }
    for what, attempt in denied.items():
        with pytest.raises(ClientError, match="AccessDenied"):
            attempt()
        print(f"denied: {what}")
    # the flywheel's own key reads what the vehicle uploaded
    got = boto3.client("s3", **where, **admin).get_object(Bucket="fleet-bucket", Key=f"fw/{clip}")["Body"].read()
    assert got == b"an MCAP clip"
