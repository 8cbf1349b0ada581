"""Scripted workshop scenarios (topologies/scenarios/): the file format, the check grammar, the runner."""

from lab.scenario.format import Scenario, ScenarioError, find_scenario, list_scenarios, load_scenario
from lab.scenario.runner import run_scenario

__all__ = ["Scenario", "ScenarioError", "find_scenario", "list_scenarios", "load_scenario", "run_scenario"]
