"""What the Kafka harness writes before any process runs: the broker's configuration, the pom that fetches its jars,
the logging binding it adds, and when a cached fetch counts as complete."""

from __future__ import annotations

import base64
from pathlib import Path
from xml.etree import ElementTree

import pytest

from steward_harness import kafka
from steward_harness.kafka import BrokerError


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_the_node_is_broker_and_controller_on_loopback_with_its_data_where_asked(tmp_path: Path) -> None:
    settings = _properties(kafka.server_properties(broker_port=9092, controller_port=9093, data=tmp_path / "data"))

    assert settings["process.roles"] == "broker,controller"
    assert settings["controller.quorum.voters"] == f"{settings['node.id']}@127.0.0.1:9093"
    assert settings["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert settings["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert settings["log.dirs"] == str(tmp_path / "data")


def test_on_another_address_the_node_listens_advertises_and_votes_there_alone(tmp_path: Path) -> None:
    settings = _properties(
        kafka.server_properties(broker_port=9092, controller_port=9093, data=tmp_path, host="10.213.0.1")
    )

    assert settings["controller.quorum.voters"] == f"{settings['node.id']}@10.213.0.1:9093"
    assert settings["listeners"] == "PLAINTEXT://10.213.0.1:9092,CONTROLLER://10.213.0.1:9093"
    assert settings["advertised.listeners"] == "PLAINTEXT://10.213.0.1:9092"
    assert "127.0.0.1" not in "".join(settings.values())


def test_clients_bootstrap_from_the_address_the_broker_is_on(tmp_path: Path) -> None:
    assert kafka.Kafka(directory=tmp_path, host="10.213.0.1").bootstrap.startswith("10.213.0.1:")
    assert kafka.Kafka(directory=tmp_path).bootstrap.startswith("127.0.0.1:")


def test_one_node_serves_transactions_and_groups_without_delay_or_surprise_topics(tmp_path: Path) -> None:
    settings = _properties(kafka.server_properties(broker_port=1, controller_port=2, data=tmp_path))

    assert settings["transaction.state.log.replication.factor"] == "1"
    assert settings["transaction.state.log.min.isr"] == "1"
    assert settings["offsets.topic.replication.factor"] == "1"
    assert settings["group.initial.rebalance.delay.ms"] == "0"
    assert settings["auto.create.topics.enable"] == "false"


def test_the_pom_depends_on_the_broker_alone_with_the_dependency_plugin_pinned() -> None:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ElementTree.fromstring(kafka.fetch_pom("4.3.2"))  # noqa: S314 -- the harness's own pom

    dependencies = pom.findall("m:dependencies/m:dependency", namespace)
    assert [
        (
            dependency.findtext("m:artifactId", namespaces=namespace),
            dependency.findtext("m:version", namespaces=namespace),
        )
        for dependency in dependencies
    ] == [("kafka_2.13", "4.3.2")]
    plugin = pom.find("m:build/m:plugins/m:plugin", namespace)
    assert plugin is not None
    assert plugin.findtext("m:version", namespaces=namespace) == kafka.DEPENDENCY_PLUGIN_VERSION


@pytest.mark.parametrize("version", ["4.3", "latest", "4.3.2</version><x>", ""])
def test_a_version_that_is_not_a_release_is_refused(version: str) -> None:
    with pytest.raises(BrokerError, match="not a Kafka release"):
        kafka.fetch_pom(version)


def test_the_logging_binding_matches_the_log4j_api_the_broker_depends_on() -> None:
    jars = ["kafka_2.13-4.3.2.jar", "log4j-api-2.25.5.jar", "log4j-core-2.25.5.jar", "slf4j-api-1.7.36.jar"]

    assert kafka.logging_binding(jars) == "org.apache.logging.log4j:log4j-slf4j-impl:2.25.5"


@pytest.mark.parametrize("jars", [["kafka_2.13-4.3.2.jar"], ["log4j-api-2.24.3.jar", "log4j-api-2.25.5.jar"]])
def test_no_logging_binding_is_guessed_without_exactly_one_log4j_api(jars: list[str]) -> None:
    with pytest.raises(BrokerError, match="one log4j-api version"):
        kafka.logging_binding(jars)


def test_a_cached_fetch_is_complete_only_when_every_jar_its_manifest_lists_is_there(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.jar").write_bytes(b"")
    assert not kafka.is_complete(tmp_path), "no manifest yet: the fetch did not finish"

    (tmp_path / kafka.MANIFEST).write_text("a.jar\nb.jar\n")
    assert not kafka.is_complete(tmp_path)

    (tmp_path / "lib" / "b.jar").write_bytes(b"")
    assert kafka.is_complete(tmp_path)


def test_a_cluster_id_is_sixteen_random_bytes_that_no_tool_reads_as_an_option() -> None:
    ids = {kafka.cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for text in ids:
        assert len(base64.urlsafe_b64decode(text + "==")) == 16
        assert not text.startswith("-")
