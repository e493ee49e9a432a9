"""package.xml, CMakeLists.txt, setup.py, scripts/ and the install tree agree with each other."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import REPO, requires_ros

import cosmos_ros

PACKAGE_XML = ET.parse(REPO / "package.xml").getroot()
CMAKE = (REPO / "CMakeLists.txt").read_text()
SETUP_PY = ast.parse((REPO / "setup.py").read_text())


def _cmake_list(var: str) -> list[str]:
    m = re.search(rf"set\({var}\s+(.*?)\)", CMAKE, re.S)
    assert m, f"CMakeLists.txt does not set {var}"
    return m.group(1).split()


def _setup_kwarg(name: str):
    for node in ast.walk(SETUP_PY):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            for kw in node.keywords:
                if kw.arg == name:
                    return ast.literal_eval(kw.value)
    raise AssertionError(f"setup() has no {name}=")


def _script_targets() -> dict[str, str]:
    """scripts/<name> -> module whose main() it calls."""
    out = {}
    for path in sorted((REPO / "scripts").iterdir()):
        m = re.search(r"^from (\S+) import main$", path.read_text(), re.M)
        assert m, f"{path} must call `from <module> import main`"
        out[path.name] = m.group(1)
    return out


def test_package_xml_is_format3_ament_cmake_interface_package() -> None:
    assert PACKAGE_XML.get("format") == "3"
    assert PACKAGE_XML.findtext("name") == "cosmos_ros"
    assert PACKAGE_XML.find("export/build_type").text == "ament_cmake"
    assert PACKAGE_XML.findtext("member_of_group") == "rosidl_interface_packages"
    assert PACKAGE_XML.findtext("license")


def test_versions_agree() -> None:
    xml_version = PACKAGE_XML.findtext("version")
    cmake_version = re.search(r"project\(cosmos_ros VERSION ([\d.]+)\)", CMAKE).group(1)
    assert xml_version == cmake_version == cosmos_ros.__version__
    # setup.py reads its version from package.xml: check it does, rather than trusting a literal
    assert "package.xml" in (REPO / "setup.py").read_text()


def test_interface_dependencies_declared() -> None:
    deps = re.search(r"DEPENDENCIES ([^\n)]+)", CMAKE).group(1).split()
    declared = {e.text for e in PACKAGE_XML if e.tag in ("depend", "build_depend")}
    assert set(deps) <= declared, f"CMake interface deps missing from package.xml: {set(deps) - declared}"
    for dep in deps:
        assert f"find_package({dep} REQUIRED)" in CMAKE
    for folder, var in (
        ("msg", "COSMOS_ROS_MSGS"),
        ("srv", "COSMOS_ROS_SRVS"),
        ("action", "COSMOS_ROS_ACTIONS"),
    ):
        on_disk = sorted(f"{folder}/{p.name}" for p in (REPO / folder).iterdir())
        assert on_disk == sorted(_cmake_list(var)), f"{folder}/ and CMakeLists.txt {var} differ"
        for path in on_disk:  # every referenced package type is declared
            for pkg in re.findall(r"^\s*([a-z_]+)/[A-Z]\w*\s", (REPO / path).read_text(), re.M):
                assert pkg in declared, f"{path} uses {pkg} but package.xml does not depend on it"


def test_executables_agree_between_cmake_scripts_and_modules() -> None:
    cmake_exes = sorted(Path(p).name for p in _cmake_list("COSMOS_ROS_EXECUTABLES"))
    scripts = _script_targets()
    assert cmake_exes == sorted(scripts), "CMakeLists.txt installs other executables than scripts/ holds"
    for name, module in scripts.items():
        mod_path = REPO / (module.replace(".", "/") + ".py")
        assert mod_path.exists(), f"scripts/{name} calls missing module {module}"
        assert re.search(r"^def main\(", mod_path.read_text(), re.M), f"{module} has no main()"
        assert (REPO / "scripts" / name).stat().st_mode & 0o111, f"scripts/{name} is not executable"


def test_console_scripts_call_the_same_mains_as_ros2_run() -> None:
    scripts = _script_targets()
    console = _setup_kwarg("entry_points")["console_scripts"]
    targets = {}
    for line in console:
        name, target = (s.strip() for s in line.split("="))
        targets[name] = target
        module, func = target.split(":")
        assert func == "main"
        assert module in scripts.values(), f"console script {name} -> {module} has no ros2 run twin"
    # the ROS-free CLIs exist under both names
    for exe in ("build_clips", "train", "embed_prompts", "plan_eval"):
        assert f"{scripts[exe]}:main" in targets.values(), f"{exe} has no pip console script"


def test_data_files_are_installed_by_both_builds() -> None:
    assert "install(DIRECTORY launch config examples DESTINATION share/${PROJECT_NAME})" in CMAKE
    data_files = (REPO / "setup.py").read_text()
    assert 'Path("config").glob("*.yaml")' in data_files


@requires_ros
def test_install_tree_matches_sources() -> None:
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    prefix = Path(get_package_prefix("cosmos_ros"))
    share = Path(get_package_share_directory("cosmos_ros"))
    for name in _script_targets():
        assert (prefix / "lib" / "cosmos_ros" / name).exists(), f"{name} not installed"
    for folder in ("launch", "config", "examples"):
        for src in (REPO / folder).glob("*"):
            if not src.name.startswith("."):
                assert (share / folder / src.name).exists(), f"{folder}/{src.name} not installed"
    # the generated interfaces and our hand-written modules are one Python package (one directory)
    import cosmos_ros.msg

    assert Path(cosmos_ros.msg.__file__).parent.parent == Path(cosmos_ros.__file__).parent
