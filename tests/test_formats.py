"""Each loader reads a tiny fake dataset written in its publisher's exact format; bad inputs fail
with one line naming the file and the row."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image
from scipy.io import savemat

from kdiqa.data.sample import LoadedDataset
from kdiqa.errors import ConfigError, DataError, KdiqaError, RegistryError
from kdiqa.registry import DATASETS

KONIQ_HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"


def image(path: Path, shade: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade, 50, 200)).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(name: str, root: Path, **options) -> LoadedDataset:
    return DATASETS.get(name)(str(root), **options)


# --- fake releases -------------------------------------------------------------------------------


def koniq(root: Path, *, folder: str = "1024x768", sets: bool = True) -> Path:
    rows = [("10004473376.jpg", 3.5, 0.52), ("10007357496.jpg", 1.0, 0.6), ("10043785683.jpg", 5.0, 0.4)]
    lines = [KONIQ_HEADER] + [f"{n},1,2,30,60,7,100,{m},{sd},55.1" for n, m, sd in rows]
    write(root / "koniq10k_scores_and_distributions.csv", "\n".join(lines) + "\n")
    for name, _, _ in rows:
        image(root / folder / name)
    if sets:
        write(
            root / "koniq10k_distributions_sets.csv",
            "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n"
            "10004473376.jpg,0,0,0.2,0.7,0.1,105,77.4,0.53,training\n"
            "10007357496.jpg,0,0,0.5,0.5,0,96,68.7,0.58,test\n"
            "10043785683.jpg,0,0,0.4,0.6,0,106,71.2,0.50,validation\n",
        )
    return root


def spaq(root: Path, rows=(("00001.jpg", 42.5), ("00002.jpg", 80), ("00003.jpg", 0))) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"])
    for name, mos in rows:
        sheet.append([name, mos, 50, 51, 52, 53, 54])
        image(root / "TestImage" / name)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    book.save(root / "Annotations" / "MOS and Image attribute scores.xlsx")
    return root


def livec(root: Path, *, std: bool = True, mos=None) -> Path:
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["3.bmp", "4.bmp", "5.bmp"]
    moses = [50.0] * 7 + [10.0, 55.5, 90.0] if mos is None else mos
    cells = np.empty((len(names), 1), dtype=object)
    for i, name in enumerate(names):
        cells[i, 0] = name
        image(root / "Images" / ("trainingImages" if i < 7 else "") / name)
    (root / "Data").mkdir(parents=True, exist_ok=True)
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([moses])})
    if std:
        savemat(
            root / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.array([[20.0] * 7 + [8.0, 10.0, 12.0]])}
        )
    return root


def kadid(root: Path, extra: str = "") -> Path:
    lines = ["dist_img,ref_img,dmos,var"]
    for ref in ("I01", "I02"):
        for level, dmos in ((1, 4.6), (5, 1.4)):
            name = f"{ref}_01_0{level}.png"
            image(root / "images" / name)
            lines.append(f"{name},{ref}.png,{dmos},0.64")
    write(root / "dmos.csv", "\n".join(lines) + "\n" + extra)
    return root


def agiqa(root: Path, folder: str = "AGIQA-3K") -> Path:
    write(
        root / "data.csv",
        "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\n"
        "AttnGAN_normal_000.jpg,statue of a man,,,,0.965602553,0.223270101,0.40889324,0.615607722\n"
        'sd1.5_normal_060.jpg,"artwork with only triangles, anime style",,,anime style,4.5,0.5,2.5,1.0\n',
    )
    image(root / folder / "AttnGAN_normal_000.jpg")
    image(root / folder / "sd1.5_normal_060.jpg")
    return root


def ava(root: Path, lines=None) -> Path:
    lines = lines or [
        "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396",
        "2 953958 10 0 0 0 0 0 0 0 0 0 15 0 1396",
        "3 954184 0 0 0 0 0 0 0 0 0 4 0 0 1397",
    ]
    write(root / "AVA.txt", "\n".join(lines) + "\n")
    for line in lines:
        image(root / "images" / f"{line.split()[1]}.jpg")
    return root


def tad66k(root: Path, *, unmerge: bool = True) -> Path:
    labels = root / "labels"
    write(labels / "merge" / "train.csv", "image,score\na1.jpg,5.5\nb1.jpg,7.25\nb2.jpg,2\n")
    write(labels / "merge" / "test.csv", "image,score\na2.jpg,6\n")
    if unmerge:
        write(labels / "unmerge" / "animal.csv", "image,score\na1.jpg,5.5\na2.jpg,6\n")
        write(labels / "unmerge" / "building.csv", "image,score\nb1.jpg,7.25\nb2.jpg,2\n")
    for name in ("a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg"):
        image(root / "imgs" / name)
    return root


def generic(root: Path, body: str, header: str = "path,mos,std,split,group") -> Path:
    write(root / "labels.csv", header + "\n" + body)
    return root


# --- the formats --------------------------------------------------------------------------------


def test_every_loader_is_registered():
    assert set(DATASETS.names()) >= {"koniq10k", "spaq", "livec", "kadid10k", "agiqa3k", "ava", "tad66k", "csv"}


def test_koniq10k_scores_std_and_official_split(tmp_path):
    ds = load("koniq10k", koniq(tmp_path))
    assert len(ds.samples) == 3 and ds.mos_range == (1.0, 5.0) and ds.has_official_split
    first, low, high = ds.samples
    assert first.path == str(tmp_path / "1024x768" / "10004473376.jpg") and os.path.isabs(first.path)
    assert first.mos == pytest.approx((3.5 - 1) / 4) and first.mos_raw == 3.5
    assert first.std == pytest.approx(0.52 / 4)
    assert (low.mos, high.mos) == (0.0, 1.0)
    assert [s.split for s in ds.samples] == ["train", "test", "val"]
    assert all(s.group is None for s in ds.samples)


def test_koniq10k_without_sets_file_and_resolution_choice(tmp_path):
    root = koniq(tmp_path, folder="512x384", sets=False)
    ds = load("koniq10k", root)
    assert not ds.has_official_split and {s.split for s in ds.samples} == {None}
    assert all("512x384" in s.path for s in ds.samples)
    koniq(tmp_path, folder="1024x768", sets=False)
    assert all("1024x768" in s.path for s in load("koniq10k", root).samples)  # preferred when both exist
    assert all("512x384" in s.path for s in load("koniq10k", root, resolution="512x384").samples)
    with pytest.raises(ConfigError, match="resolution must be one of"):
        load("koniq10k", root, resolution="2048x1536")


def test_spaq_xlsx(tmp_path):
    ds = load("spaq", spaq(tmp_path))
    assert [round(s.mos, 4) for s in ds.samples] == [0.425, 0.8, 0.0]
    assert [s.mos_raw for s in ds.samples] == [42.5, 80.0, 0.0]
    assert ds.samples[0].path.endswith(os.path.join("TestImage", "00001.jpg"))
    assert all(s.std is None and s.split is None for s in ds.samples) and not ds.has_official_split


def test_livec_mat_files_and_training_examples(tmp_path):
    root = livec(tmp_path)
    ds = load("livec", root)
    assert [os.path.basename(s.path) for s in ds.samples] == ["3.bmp", "4.bmp", "5.bmp"]
    assert [s.mos for s in ds.samples] == pytest.approx([0.1, 0.555, 0.9])
    assert [s.std for s in ds.samples] == pytest.approx([0.08, 0.10, 0.12])
    full = load("livec", root, include_training_examples=True)
    assert len(full.samples) == 10
    assert full.samples[0].path == str(root / "Images" / "trainingImages" / "t1.bmp")


def test_livec_without_std_file(tmp_path):
    ds = load("livec", livec(tmp_path, std=False))
    assert all(s.std is None for s in ds.samples)


def test_kadid10k_groups_by_reference(tmp_path):
    ds = load("kadid10k", kadid(tmp_path))
    assert len(ds.samples) == 4 and ds.higher_is_better
    assert [s.group for s in ds.samples] == ["I01.png", "I01.png", "I02.png", "I02.png"]
    assert ds.samples[0].mos == pytest.approx((4.6 - 1) / 4)  # mild distortion scores high
    assert ds.samples[1].mos == pytest.approx((1.4 - 1) / 4)
    assert ds.samples[0].std == pytest.approx(math.sqrt(0.64) / 4)


def test_agiqa3k_targets_and_image_dir(tmp_path):
    root = agiqa(tmp_path)
    quality = load("agiqa3k", root)
    assert quality.samples[0].mos_raw == pytest.approx(0.965602553)
    assert quality.samples[1].mos == pytest.approx(0.9) and quality.samples[1].std == pytest.approx(0.1)
    align = load("agiqa3k", root, target="align")
    assert align.samples[1].mos == pytest.approx(0.5) and align.samples[1].std == pytest.approx(0.2)
    other = agiqa(tmp_path / "other", folder="pics")
    assert (
        load("agiqa3k", other, image_dir="pics")
        .samples[0]
        .path.endswith(os.path.join("pics", "AttnGAN_normal_000.jpg"))
    )
    with pytest.raises(ConfigError, match="target must be one of"):
        load("agiqa3k", root, target="aesthetics")


def test_ava_vote_distribution_and_challenge(tmp_path):
    ds = load("ava", ava(tmp_path))
    first, bottom, top = ds.samples
    counts = [0, 1, 5, 17, 38, 36, 15, 6, 5, 1]
    mean = sum(i * c for i, c in enumerate(counts, start=1)) / sum(counts)
    assert first.mos_raw == pytest.approx(mean) and first.mos == pytest.approx((mean - 1) / 9)
    assert sum(first.dist) == pytest.approx(1.0) and len(first.dist) == 10
    assert first.dist[4] == pytest.approx(38 / sum(counts))
    assert (bottom.mos, top.mos) == (0.0, 1.0) and bottom.std == 0.0
    assert [s.theme for s in ds.samples] == ["1396", "1396", "1397"]
    assert first.path.endswith(os.path.join("images", "953619.jpg"))


def test_tad66k_official_split_and_themes(tmp_path):
    ds = load("tad66k", tad66k(tmp_path))
    assert ds.has_official_split and ds.mos_range == (0.0, 10.0)
    assert [(os.path.basename(s.path), s.split, s.theme) for s in ds.samples] == [
        ("a1.jpg", "train", "animal"),
        ("b1.jpg", "train", "building"),
        ("b2.jpg", "train", "building"),
        ("a2.jpg", "test", "animal"),
    ]
    assert ds.samples[1].mos == pytest.approx(0.725) and ds.samples[1].mos_raw == 7.25
    without = load("tad66k", tad66k(tmp_path / "bare", unmerge=False))
    assert {s.theme for s in without.samples} == {None}


def test_tad66k_theme_folders_named_train_test(tmp_path):
    root = tad66k(tmp_path, unmerge=False)
    write(root / "labels" / "unmerge" / "portrait" / "train.csv", "image,score\na1.jpg,5.5\n")
    ds = load("tad66k", root)
    assert ds.samples[0].theme == "portrait" and ds.samples[1].theme is None


def test_generic_csv_paths_split_group_and_range(tmp_path):
    image(tmp_path / "pics" / "a.png")
    image(tmp_path / "pics" / "b.png")
    absolute = image(tmp_path / "elsewhere" / "c.png")
    root = generic(tmp_path, f"pics/a.png,2,0.5,train,g1\npics/b.png,4,,val,\n{absolute},3,1,test,g1\n")
    ds = load("csv", root, mos_range=[0, 4])
    assert [s.mos for s in ds.samples] == [0.5, 1.0, 0.75] and ds.has_official_split
    assert [s.std for s in ds.samples] == [0.125, None, 0.25]
    assert [s.split for s in ds.samples] == ["train", "val", "test"]
    assert [s.group for s in ds.samples] == ["g1", None, "g1"]
    assert ds.samples[2].path == str(absolute)
    flipped = load("csv", root, mos_range=[0, 4], higher_is_better=False)
    assert [s.mos for s in flipped.samples] == [0.5, 0.0, 0.25] and not flipped.higher_is_better


def test_generic_csv_infers_range_with_a_warning(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    write(tmp_path / "sub" / "mine.csv", "path,mos\n../a.png,10\n../b.png,30\n")
    with pytest.warns(UserWarning, match=r"no mos_range given.*\[10, 30\]"):
        ds = load("csv", tmp_path, file="sub/mine.csv")
    assert [s.mos for s in ds.samples] == [0.0, 1.0] and ds.mos_range == (10.0, 30.0)
    assert not ds.has_official_split and ds.samples[0].split is None


def test_registry_build_passes_options(tmp_path):
    ds = DATASETS.build("kadid10k", root=str(kadid(tmp_path)), on_bad_row="skip")
    assert ds.name == "kadid10k" and not ds.skipped


# --- bad input ---------------------------------------------------------------------------------


def test_missing_image_names_file_row_and_folder(tmp_path):
    root = koniq(tmp_path)
    (root / "1024x768" / "10007357496.jpg").unlink()
    with pytest.raises(DataError) as err:
        load("koniq10k", root)
    assert str(err.value) == (
        f"koniq10k_scores_and_distributions.csv row 3: image '10007357496.jpg' not found in {root / '1024x768'}"
    )


def test_nan_mos_names_row_and_column(tmp_path):
    root = koniq(tmp_path)
    path = root / "koniq10k_scores_and_distributions.csv"
    path.write_text(path.read_text().replace(",1.0,0.6,", ",NaN,0.6,"))
    with pytest.raises(
        DataError, match=r"^koniq10k_scores_and_distributions.csv row 3: column 'MOS': 'NaN' is not a finite"
    ):
        load("koniq10k", root)


def test_empty_and_text_scores_are_bad_rows(tmp_path):
    root = kadid(tmp_path, extra="I03_01_01.png,I03.png,,0.5\n")
    image(root / "images" / "I03_01_01.png")
    with pytest.raises(DataError, match=r"^dmos.csv row 6: column 'dmos': empty is not a number$"):
        load("kadid10k", root)


def test_missing_column_is_an_error_even_when_skipping(tmp_path):
    root = koniq(tmp_path)
    path = root / "koniq10k_scores_and_distributions.csv"
    path.write_text(path.read_text().replace(",SD,", ",STD,"))
    with pytest.raises(
        DataError, match=r"^koniq10k_scores_and_distributions.csv: missing column 'SD' \(found: .*'STD'"
    ):
        load("koniq10k", root, on_bad_row="skip")


def test_missing_label_file_says_where_it_is_expected(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"^kadid10k label file not found: expected .*dmos.csv$"):
        load("kadid10k", tmp_path)
    with pytest.raises(DataError, match="spaq label file not found: expected .*Annotations"):
        load("spaq", tmp_path)
    with pytest.raises(DataError, match="dataset folder not found"):
        load("ava", tmp_path / "nowhere")


def test_skip_mode_counts_and_describes_rows(tmp_path):
    root = kadid(tmp_path, extra="I09_01_01.png,I09.png,3.0,0.5\nI01_01_05.png,I01.png,abc,0.5\n")
    ds = load("kadid10k", root, on_bad_row="skip")
    assert len(ds.samples) == 4
    assert ds.skipped == [
        f"dmos.csv row 6: image 'I09_01_01.png' not found in {root / 'images'}",
        "dmos.csv row 7: column 'dmos': 'abc' is not a number",
    ]


def test_unknown_split_values(tmp_path):
    image(tmp_path / "a.png")
    generic(tmp_path, "a.png,1,,training,\n")
    with pytest.raises(DataError, match=r"^labels.csv row 2: column 'split': unknown split 'training'"):
        load("csv", tmp_path, mos_range=[0, 5])
    root = koniq(tmp_path / "k")
    sets = root / "koniq10k_distributions_sets.csv"
    sets.write_text(sets.read_text().replace("validation", "holdout"))
    with pytest.raises(
        DataError, match=r"^koniq10k_distributions_sets.csv row 4: column 'set': unknown split 'holdout'"
    ):
        load("koniq10k", root)


def test_ragged_row(tmp_path):
    root = agiqa(tmp_path)
    with open(root / "data.csv", "a") as handle:
        handle.write("broken.jpg,a prompt,,\n")
    with pytest.raises(DataError, match=r"^data.csv row 4: has 4 fields, the header has 9$"):
        load("agiqa3k", root)


def test_ava_bad_lines(tmp_path):
    good = "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396"
    root = ava(
        tmp_path, [good, "2 953958 0 0 0 0 0 0 0 0 0 0 15 0 1396", "3 954184 0 x 0 0 0 0 0 0 0 4 0 0 1397", "4 1 2 3"]
    )
    ds = load("ava", root, on_bad_row="skip")
    assert len(ds.samples) == 1
    assert ds.skipped == [
        "AVA.txt row 2: image has no votes",
        "AVA.txt row 3: votes for score 2: 'x' is not a whole number",
        "AVA.txt row 4: has 4 fields, expected 15 (index, id, 10 vote counts, 2 tags, challenge)",
    ]


def test_spaq_bad_row_uses_sheet_row(tmp_path):
    root = spaq(tmp_path, rows=(("00001.jpg", 40), ("00002.jpg", "n/a")))
    with pytest.raises(DataError, match=r"^Annotations/MOS and Image attribute scores.xlsx row 3: column 'MOS': 'n/a'"):
        load("spaq", root)


def test_livec_length_mismatch_and_missing_variable(tmp_path):
    root = livec(tmp_path, mos=[50.0] * 9)
    with pytest.raises(DataError, match=r"AllMOS_release.mat: has 9 values but Data/AllImages_release.mat lists 10"):
        load("livec", root)
    savemat(root / "Data" / "AllMOS_release.mat", {"mos": np.zeros((1, 10))})
    with pytest.raises(DataError, match=r"AllMOS_release.mat: variable 'AllMOS_release' missing \(found: 'mos'\)"):
        load("livec", root)


def test_out_of_range_and_duplicate_rows(tmp_path):
    root = kadid(tmp_path, extra="I01_01_01.png,I01.png,4.0,0.1\n")
    with pytest.raises(DataError, match=r"^dmos.csv row 6: image 'I01_01_01.png' is already listed in row 2$"):
        load("kadid10k", root)
    root = tad66k(tmp_path / "t")
    write(root / "labels" / "merge" / "test.csv", "image,score\na2.jpg,11\n")
    with pytest.raises(
        DataError, match=r"merge/test.csv row 2: column 'score': 11 is outside the published range \[0, 10\]"
    ):
        load("tad66k", root)
    assert load("tad66k", root, score_range=[0, 20]).samples[-1].mos == pytest.approx(0.55)


def test_all_rows_skipped_is_an_error(tmp_path):
    root = koniq(tmp_path)
    for file in (root / "1024x768").iterdir():
        file.unlink()
    with pytest.raises(DataError, match=r"^koniq10k: no usable samples; all 3 rows were skipped, the first: .*row 2"):
        load("koniq10k", root, on_bad_row="skip")


def test_bad_options(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    generic(tmp_path, "a.png,3\nb.png,3\n", header="path,mos")
    with pytest.raises(DataError, match="every MOS is 3, so no MOS range can be inferred"):
        load("csv", tmp_path)
    with pytest.raises(ConfigError, match=r"mos_range must be finite with low < high"):
        load("csv", tmp_path, mos_range=[5, 1])
    with pytest.raises(ConfigError, match=r"mos_range must be \[low, high\]"):
        load("csv", tmp_path, mos_range="0-5")
    with pytest.raises(RegistryError, match="unexpected keyword argument 'colour'"):
        DATASETS.build("csv", root=str(tmp_path), colour="red")


def test_errors_are_one_line_kdiqa_errors(tmp_path):
    root = kadid(tmp_path, extra="x.png,I01.png,3,0.1\n")
    with pytest.raises(KdiqaError) as err:
        load("kadid10k", root)
    assert "\n" not in str(err.value)
