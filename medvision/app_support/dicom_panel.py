"""The Predict page's part for a DICOM study: reading it, its series table and modality mapping, the
preprocessing steps with before/after pictures, and the downloads on the study's own grid.

The page calls :func:`read_upload` when :func:`medvision.app_support.dicom_upload.is_dicom_upload` says
the files are DICOM, :func:`study_panel` once the case is shown, and :func:`downloads` beside its own
downloads. The mapping the user picks lives in the session (``OPTIONS_KEY``); a changed pick reads the
study again with it. Everything that came from the files (descriptions, notes) is shown as plain text.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from medvision.app_support import dicom_choices, dicom_pictures, dicom_upload
from medvision.app_support.plain_text import plain
from medvision.app_support.uploads import Upload
from medvision.data.case import MODALITIES
from medvision.errors import MedVisionError

OPTIONS_KEY = "predict_dicom_options"  # (files key, DicomOptions): the mapping wanted for those files
HELD_KEY = "predict_dicom"  # the _Held study shown


@dataclass(frozen=True)
class _Held:
    files_key: str  # the uploaded files, as the page keys them
    study: dicom_upload.DicomUpload  # read with study.options

    @property
    def case_key(self) -> str:
        """The files' key with the mapping added: another mapping is another case."""
        return f"{self.files_key}:{hashlib.sha1(repr(self.study.options).encode()).hexdigest()[:12]}"


def _wanted_options(files_key: str) -> dicom_upload.DicomOptions:
    """The mapping picked for these files; another study starts from its own (series numbers differ)."""
    wanted = st.session_state.get(OPTIONS_KEY)
    if isinstance(wanted, tuple) and wanted[0] == files_key:
        return wanted[1]
    return dicom_upload.DicomOptions()


def _held() -> _Held | None:
    held = st.session_state.get(HELD_KEY)
    return held if isinstance(held, _Held) else None


def holds(files_key: str) -> bool:
    """Whether the study shown was read from these files (the page need not look at their bytes again)."""
    held = _held()
    return held is not None and held.files_key == files_key


def read_upload(
    files: Sequence[Upload], files_key: str, upload_root: Path, max_bytes: int
) -> tuple[str, dicom_upload.DicomUpload]:
    """(case key, study): read once per files and mapping; an unreadable study is an error and a stop."""
    wanted = _wanted_options(files_key)
    held = _held()
    if held is not None and held.files_key == files_key and held.study.options == wanted:
        return held.case_key, held.study
    st.session_state.pop(HELD_KEY, None)
    try:
        with st.spinner("Reading the DICOM study…"):
            study = dicom_upload.read_dicom_upload(files, upload_root, max_bytes=max_bytes, options=wanted)
    except MedVisionError as error:
        st.error(f"Cannot use this DICOM study — {plain(error)}")
        st.stop()
    held = _Held(files_key, study)
    st.session_state[HELD_KEY] = held
    return held.case_key, study


def held_study(case_key: str) -> dicom_upload.DicomUpload | None:
    """The study behind the case shown, or None when the case is not a DICOM upload."""
    held = _held()
    return held.study if held is not None and held.case_key == case_key else None


def forget() -> None:
    st.session_state.pop(HELD_KEY, None)
    st.session_state.pop(OPTIONS_KEY, None)


def _mapping(study: dicom_upload.DicomUpload, can_reread: bool) -> None:
    """Four selectboxes; a changed pick stores the new mapping and reruns, which reads the study again."""
    choices = dicom_choices.modality_options(study)
    columns = st.columns(len(MODALITIES))
    picked = {}
    for column, modality in zip(columns, MODALITIES, strict=True):
        offered = choices[modality]
        current = dicom_choices.current_choice(study, modality)
        picked[modality] = column.selectbox(
            modality.upper(),
            offered,
            index=offered.index(current) if current in offered else 0,
            key=f"predict_dicom_pick_{modality}",
            disabled=not can_reread,
        )
    if not can_reread:
        st.caption("Upload the study again to change the mapping (the files are not kept).")
        return
    if all(choice == dicom_choices.NONE for choice in picked.values()):
        st.warning("Keep at least one modality: the study is shown as read before.")
        return
    overrides = dicom_choices.overrides_from_choices(study, picked)
    if overrides != dict(study.options.overrides):
        held = _held()
        if held is not None:
            chosen = dataclasses.replace(study.options, overrides=overrides)
            st.session_state[OPTIONS_KEY] = (held.files_key, chosen)
        st.rerun()


def _registration(study: dicom_upload.DicomUpload, can_reread: bool) -> None:
    """A checkbox for the rigid refinement (``predict --register``); a change reads the study again."""
    if len(study.native.case.available) < 2:
        return
    wanted = st.checkbox(
        "Refine the alignment of the series (rigid registration onto the reference)",
        value=study.options.register,
        key="predict_dicom_register",
        disabled=not can_reread,
        help=(
            "Series of one study share the scanner's coordinates, so they usually line up as they are; "
            "a patient who moved between series needs this. The pictures below then show the "
            "checkerboard before and after the refinement."
        ),
    )
    if wanted != study.options.register and can_reread:
        held = _held()
        if held is not None:
            chosen = dataclasses.replace(study.options, register=wanted)
            st.session_state[OPTIONS_KEY] = (held.files_key, chosen)
        st.rerun()


def _pictures(study: dicom_upload.DicomUpload, convention: str) -> None:
    count = dicom_pictures.axial_slice_count(study, convention)
    index = st.slider(
        "Axial slice of the reference series", 0, count - 1, count // 2, key="predict_dicom_slice"
    )
    pictures = dicom_pictures.slice_pictures(study, index, convention=convention)
    e = pictures.edges
    st.caption(
        f"Axial slice {index} of the {pictures.reference.upper()} series, {convention} convention: "
        f"{e['top']} at the top, {e['bottom']} at the bottom, {e['left']} on the left, "
        f"{e['right']} on the right."
    )
    shown: list[tuple[str, np.ndarray]] = []
    for m, image in pictures.registration.items():
        pair = f"{pictures.reference.upper()} / {m.upper()} checkerboard"
        if m in pictures.before_registration:
            shown.append(
                (f"Before registration: {pair}, as the scanner placed them", pictures.before_registration[m])
            )
            shown.append((f"After registration: {pair}", image))
        else:
            shown.append((f"Registration: {pair}, as the scanner placed them", image))
    if pictures.brain_outline is not None and pictures.brain_cut is not None:
        shown += [("Brain extraction: the mask's outline (green)", pictures.brain_outline)]
        shown += [("After brain extraction: what the model sees", pictures.brain_cut)]
    if not shown:
        st.caption("One series and no brain extraction: nothing to compare.")
        return
    for column, (title, image) in zip(st.columns(min(3, len(shown))), shown[:3], strict=False):
        column.image(image, caption=title, width="stretch")
    for column, (title, image) in zip(st.columns(3), shown[3:], strict=False):
        column.image(image, caption=title, width="stretch")


def study_panel(study: dicom_upload.DicomUpload, *, can_reread: bool, convention: str) -> None:
    """The series table, the modality mapping, the steps done and the before/after pictures."""
    with st.expander(
        f"DICOM study {plain(study.name)}: series, modality mapping, preprocessing", expanded=True
    ):
        st.dataframe(dicom_choices.series_rows(study), hide_index=True)
        st.markdown("**Modality mapping** (the series each modality is read from)")
        _mapping(study, can_reread)
        st.markdown("**What was done**")
        st.text("\n".join(study.steps) if study.steps else "nothing beyond reading the series")
        _registration(study, can_reread)
        st.caption(
            "The model runs on the reference series' slices resampled to about 1 mm in-plane; the "
            "segmentation downloads come back on the reference series' own grid."
        )
        _pictures(study, convention)


def downloads(study: dicom_upload.DicomUpload, label: np.ndarray, case_id: str, columns: Sequence) -> None:
    """Segmentation NIfTI on the reference grid and a DICOM-SEG referencing the reference series."""
    columns[0].download_button(
        "Segmentation on the study's grid (NIfTI)",
        icon=":material/download:",
        data=lambda: dicom_upload.segmentation_nifti_bytes(label, study),
        file_name=f"{case_id}_medvision_seg.nii.gz",
        mime="application/gzip",
        key="predict_download_dicom_nifti",
        on_click="ignore",
    )
    columns[1].download_button(
        "Segmentation (DICOM-SEG)",
        icon=":material/download:",
        data=lambda: dicom_upload.dicom_seg_bytes(label, study),
        file_name=f"{case_id}_medvision_seg.dcm",
        mime="application/dicom",
        key="predict_download_dicom_seg",
        on_click="ignore",
    )
