"""The fault-injecting S3 proxy itself: what passes, what fails, and that a forwarded-then-failed
request did reach the store."""

from __future__ import annotations

import pytest

from tests.fault_proxy import fault_proxy


def _client(endpoint: str):  # noqa: ANN202
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def _put_aws_chunked(endpoint: str, path: str, parts: list[bytes]) -> None:
    """A PUT as streaming S3 clients send it: an aws-chunked body in HTTP chunked transfer."""
    import http.client

    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    conn = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=30)
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Content-Sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "X-Amz-Decoded-Content-Length": str(sum(map(len, parts))),
        "Transfer-Encoding": "chunked",
    }
    conn.request("PUT", path, body=iter([body[:7], body[7:]]), headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    conn.close()


def test_fault_proxy_modes(moto_server, s3_bucket):
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    cut = (BotoConnectionError, HTTPClientError)  # refused, reset or closed before an answer

    bucket = s3_bucket[5:]
    with fault_proxy(moto_server) as proxy:
        s3 = _client(proxy.endpoint)
        # pass-through: sized and aws-chunked bodies, HEAD, ranged GET, conditional PUT
        s3.put_object(Bucket=bucket, Key="a", Body=b"x" * 200_000)
        assert s3.head_object(Bucket=bucket, Key="a")["ContentLength"] == 200_000
        assert s3.get_object(Bucket=bucket, Key="a", Range="bytes=5-9")["Body"].read() == b"xxxxx"
        _put_aws_chunked(proxy.endpoint, f"/{bucket}/chunked", [b"hello ", b"world"])
        assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == b"hello world"
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket=bucket, Key="a", Body=b"y", IfNoneMatch="*")
        assert e.value.response["Error"]["Code"] == "PreconditionFailed"

        proxy.fail(500)
        with pytest.raises(ClientError) as e:
            s3.head_object(Bucket=bucket, Key="a")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert proxy.hits == 1

        # forwarded, then 500: the object exists although the client was told it failed
        proxy.fail("after", method="PUT", path=r"/c$")
        with pytest.raises(ClientError):
            s3.put_object(Bucket=bucket, Key="c", Body=b"c")
        s3.put_object(Bucket=bucket, Key="other", Body=b"o")  # not matched: passes

        proxy.fail("drop-after", method="PUT", path=r"/d$")
        with pytest.raises(cut):
            s3.put_object(Bucket=bucket, Key="d", Body=b"d")

        proxy.fail("drop")
        with pytest.raises(cut):
            s3.get_object(Bucket=bucket, Key="c")

        proxy.passthrough()
        assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"c"
        assert s3.get_object(Bucket=bucket, Key="d")["Body"].read() == b"d"
        assert ("PUT", f"/{bucket}/c", 500) in proxy.log
        assert ("PUT", f"/{bucket}/d", None) in proxy.log

        # delta-rs (object_store) through the proxy: conditional commit PUTs and listing
        import pyarrow as pa
        from deltalake import DeltaTable, write_deltalake

        opts = {"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
        uri = f"{s3_bucket}/t"
        write_deltalake(uri, pa.table({"x": [1, 2]}), storage_options=opts)
        write_deltalake(uri, pa.table({"x": [3]}), mode="append", storage_options=opts)
        assert DeltaTable(uri, storage_options=opts).to_pyarrow_table().num_rows == 3
